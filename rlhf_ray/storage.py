"""Storage every node of a cluster reaches: where stages read their inputs and write their
checkpoints, logs and resumable states.

A *location* is a local path (a disk, or one file system mounted on every node: NFS, EFS, a
Kubernetes ReadWriteMany claim) or a ``pyarrow.fs`` URI (``s3://bucket/runs/sft``, ``gs://``,
``hdfs://``, ``abfs://``, ``file://``):

    local = local_copy("s3://b/runs/sft", "manifest.json")   # a local copy on this node (cached)
    with staged("s3://b/runs/sft") as local:                  # write locally, published on exit
        save_checkpoint(local, ...)

A local path is used as it is, everywhere. A URI is read through a per-node cache
(:func:`local_copy`: downloaded once, again when its marker file changed) and written
through a local staging directory (:func:`staged`) published when the block ends. A
directory with a marker (a checkpoint's ``manifest.json``) is published so that it never
reads as complete while incomplete: the old marker is deleted first, the other files are
uploaded, the marker last. ``file://`` URIs take the same code path as ``s3://`` (the tests
use them); credentials are pyarrow's (the usual AWS/GCS environment or instance profile).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def normalize(location: str | Path) -> str:
    """A URI unchanged, a local path made absolute (``~`` expanded)."""
    s = str(location)
    return s.rstrip("/") if is_uri(s) else str(Path(s).expanduser().resolve())


def join(location: str | Path, *parts: str) -> str:
    s = str(location)
    return "/".join([s.rstrip("/"), *parts]) if is_uri(s) else str(Path(s, *parts))


def sibling(location: str | Path, suffix: str) -> str:
    """``location`` with ``suffix`` appended to its last part (``runs/ppo`` -> ``runs/ppo.state``)."""
    return str(location).rstrip("/") + suffix


def basename(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def _fs(location: str | Path):
    from pyarrow import fs

    if is_uri(location):
        return fs.FileSystem.from_uri(str(location))
    return fs.LocalFileSystem(), normalize(location)


def _kind(location: str | Path) -> str:
    """"file", "dir" or "missing"."""
    from pyarrow.fs import FileType

    filesystem, path = _fs(location)
    t = filesystem.get_file_info(path).type
    return {FileType.File: "file", FileType.Directory: "dir"}.get(t, "missing")


def exists(location: str | Path) -> bool:
    return _kind(location) != "missing"


def read_text(location: str | Path) -> str | None:
    """The file's text, or None when it does not exist."""
    filesystem, path = _fs(location)
    try:
        with filesystem.open_input_stream(path) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def write_text(location: str | Path, text: str) -> None:
    """Write a small file whole: a temp sibling renamed into place (local), one PUT (object stores)."""
    if not is_uri(location):
        p = Path(normalize(location))
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        tmp.write_text(text)
        os.replace(tmp, p)
        return
    filesystem, path = _fs(location)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as f:
        f.write(text.encode())


def listdir(location: str | Path) -> list[str]:
    """Names directly under ``location`` ([] when it does not exist)."""
    from pyarrow.fs import FileSelector

    filesystem, path = _fs(location)
    infos = filesystem.get_file_info(FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def remove(location: str | Path) -> None:
    """Delete a file or a directory tree (nothing when it does not exist)."""
    filesystem, path = _fs(location)
    kind = _kind(location)
    if kind == "dir":
        filesystem.delete_dir(path)
    elif kind == "file":
        filesystem.delete_file(path)


def move(src: str | Path, dst: str | Path) -> None:
    """Rename a file or directory within one file system (a local path, or a store that can:
    pyarrow refuses directory moves on object stores, and the error says so)."""
    filesystem, path = _fs(src)
    _, target = _fs(dst)
    filesystem.move(path, target)


def _files(location: str | Path) -> list[str]:
    """Paths of every file under a directory, relative to it."""
    from pyarrow.fs import FileSelector, FileType

    filesystem, path = _fs(location)
    infos = filesystem.get_file_info(FileSelector(path, recursive=True, allow_not_found=True))
    base = path.rstrip("/") + "/"
    return sorted(i.path[len(base):] for i in infos if i.type == FileType.File)


def _copy_file(src_fs, src: str, dst_fs, dst: str) -> None:
    dst_fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
    with src_fs.open_input_stream(src) as fin, dst_fs.open_output_stream(dst) as fout:
        while block := fin.read(1 << 22):
            fout.write(block)


def upload(local_dir: str | Path, location: str | Path, marker: str | None = None) -> None:
    """Copy a local directory to ``location``. With a ``marker`` the directory there is replaced:
    the old one deleted (its marker first), every other file copied, the marker last; without,
    the files are merged into what is there (several ranks publishing parts of one state)."""
    from pyarrow.fs import LocalFileSystem

    local = Path(local_dir)
    dst_fs, dst = _fs(location)
    if marker is not None:
        remove(join(location, marker))
        remove(location)
    rels = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    if marker is not None:
        rels = [r for r in rels if r != marker] + ([marker] if (local / marker).is_file() else [])
    dst_fs.create_dir(dst, recursive=True)
    for rel in rels:
        _copy_file(LocalFileSystem(), str(local / rel), dst_fs, f"{dst.rstrip('/')}/{rel}")


def download(location: str | Path, local_dir: str | Path) -> Path:
    """Copy the directory at ``location`` into ``local_dir`` (created); returns it."""
    from pyarrow.fs import LocalFileSystem

    src_fs, src = _fs(location)
    out = Path(local_dir)
    out.mkdir(parents=True, exist_ok=True)
    for rel in _files(location):
        _copy_file(src_fs, f"{src.rstrip('/')}/{rel}", LocalFileSystem(), str(out / rel))
    return out


def cache_dir() -> Path:
    """This node's copies of remote locations: ``$RLHF_RAY_CACHE/storage`` (default ~/.cache/rlhf-ray)."""
    from rlhf_ray.data.fetch import cache_root

    return cache_root() / "storage"


def local_copy(location: str | Path, marker: str) -> Path:
    """A local directory holding what is at ``location``: the path itself when it is local, else
    this node's cached copy, downloaded when missing or when the remote ``marker`` file differs
    from the cached one. A location without its marker is returned as a (missing) cache path, so
    the caller's own "incomplete / not found" error names it."""
    if not is_uri(location):
        return Path(normalize(location))
    import fcntl

    key = hashlib.sha256(normalize(location).encode()).hexdigest()[:16]
    target = cache_dir() / key / basename(location)
    remote = read_text(join(location, marker))
    if remote is None:
        return target
    mine = target / marker
    if mine.is_file() and mine.read_text() == remote:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:  # one download per node: the other readers wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if mine.is_file() and mine.read_text() == remote:  # another process has just fetched it
            return target
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            download(location, tmp)  # rewritten meanwhile? the caller's check (hashes, fingerprint) sees it
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:6]}"
            if target.exists():
                os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def fetched(location: str | Path) -> Iterator[Path]:
    """A local directory with what is at ``location`` for the duration of the block (a temporary
    download for a URI, removed afterwards; the path itself when local)."""
    if not is_uri(location):
        yield Path(normalize(location))
        return
    tmp = Path(tempfile.mkdtemp(prefix="rlhf-ray-fetch-"))
    try:
        yield download(location, tmp / basename(location))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged(location: str | Path, marker: str | None = "manifest.json") -> Iterator[Path]:
    """A local path standing for ``location`` while the block writes to it.

    Local ``location``: the path itself (writers there are atomic on their own). URI: a path in a
    private temporary directory; when the block ends, whatever was written is published: the
    directory named like ``location`` with :func:`upload` (``marker`` last, or merged when
    ``marker`` is None) and its ``<name>.*`` siblings (logs, pairs) merged beside it. Publishing
    also runs when the block fails (a complete checkpoint never exists locally unless it was
    renamed into place, and the logs of a failed run are worth keeping); a publishing error then
    does not hide the block's own.
    """
    if not is_uri(location):
        yield Path(normalize(location))
        return
    from pyarrow.fs import LocalFileSystem

    tmp = Path(tempfile.mkdtemp(prefix="rlhf-ray-stage-"))
    name = basename(location)
    parent = str(location).rstrip("/")[: -len(name)].rstrip("/")

    def publish() -> None:
        for entry in sorted(tmp.iterdir()):
            if entry.name == name and entry.is_dir():
                upload(entry, location, marker)
            elif entry.name.startswith(name + ".") and entry.is_dir():
                upload(entry, join(parent, entry.name))
            elif entry.name.startswith(name + ".") and entry.is_file():
                dst_fs, dst = _fs(join(parent, entry.name))
                _copy_file(LocalFileSystem(), str(entry), dst_fs, dst)

    try:
        try:
            yield tmp / name
        except BaseException:
            try:
                publish()
            except Exception:  # noqa: BLE001  the block's error is the one to see
                pass
            raise
        publish()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
