"""``rlhf-ray data fetch ml-100k``: put MovieLens-100K in the local cache, atomically.

The data is not shipped with this repository (licence). By default it comes
from the RecBole wheel on PyPI, which bundles ML-100K as atomic files::

    python -m pip download --no-deps recbole==1.2.1 -d <tmp>
    -> recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}

``--from PATH`` takes a GroupLens ``ml-100k.zip`` / directory, a RecBole atomic
directory, or an already downloaded RecBole wheel instead. Files are gathered in a
temporary sibling directory, checked by reading them, then renamed into place,
so an interrupted fetch never leaves a half-filled cache.

Cache: ``$RLHF_RAY_CACHE/ml-100k``, default ``~/.cache/rlhf-ray/ml-100k``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from rlhf_ray.data.movielens import read_movielens
from rlhf_ray.errors import DataError

FETCHABLE = ("ml-100k",)
RECBOLE_SPEC = "recbole==1.2.1"
WHEEL_DIR = "recbole/dataset_example/ml-100k/"
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


def cache_root() -> Path:
    return Path(os.environ.get("RLHF_RAY_CACHE") or "~/.cache/rlhf-ray").expanduser()


def default_cache(name: str = "ml-100k") -> Path:
    return cache_root() / name


def is_complete(d: Path) -> bool:
    """True if ``d`` holds ML-100K in either layout."""
    return ((d / "ml-100k.inter").is_file() and (d / "ml-100k.item").is_file()) or \
        ((d / "u.data").is_file() and (d / "u.item").is_file())


def pip_download(dest: Path) -> Path:
    """Download the RecBole wheel into ``dest`` with pip; return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           RECBOLE_SPEC, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataError(f"`{' '.join(cmd[2:])}` failed ({' / '.join(tail)}); "
                        f"download ml-100k.zip from GroupLens and use --from PATH")
    wheels = sorted(dest.glob("recbole-*.whl"))
    if not wheels:
        raise DataError(f"pip download of {RECBOLE_SPEC} produced no wheel in {dest}")
    return wheels[0]


def _extract_wheel(wheel: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            missing = [f for f in RECBOLE_FILES[:2] if WHEEL_DIR + f not in names]
            if missing:
                raise DataError(f"{wheel}: does not contain {[WHEEL_DIR + f for f in missing]}")
            for f in RECBOLE_FILES:
                if WHEEL_DIR + f in names:
                    (dest / f).write_bytes(z.read(WHEEL_DIR + f))
    except zipfile.BadZipFile as e:
        raise DataError(f"{wheel}: not a valid wheel/zip ({e})") from None


def _copy_source(src: Path, dest: Path) -> None:
    """Copy ML-100K files from a wheel, a GroupLens zip, or a directory into ``dest``."""
    if not src.exists():
        raise DataError(f"{src}: not found")
    if src.is_file() and src.suffix == ".whl":
        return _extract_wheel(src, dest)
    if src.is_file():
        try:
            with zipfile.ZipFile(src) as z:
                members = {n.rsplit("/", 1)[-1]: n for n in z.namelist() if not n.endswith("/")}
                if "u.data" not in members or "u.item" not in members:
                    raise DataError(f"{src}: not a GroupLens ml-100k zip (no u.data / u.item inside)")
                for base, name in members.items():
                    if base.startswith("u.") or base == "README":
                        (dest / base).write_bytes(z.read(name))
        except zipfile.BadZipFile as e:
            raise DataError(f"{src}: not a valid zip file ({e})") from None
        return None
    if (src / "u.data").is_file():
        files = [f for f in src.iterdir() if f.is_file() and (f.name.startswith("u.") or f.name == "README")]
    elif (src / "ml-100k.inter").is_file():
        files = [src / f for f in RECBOLE_FILES if (src / f).is_file()]
    else:
        raise DataError(f"{src}: holds neither GroupLens (u.data) nor RecBole (ml-100k.inter) files")
    for f in files:
        shutil.copyfile(f, dest / f.name)
    return None


def fetch(name: str = "ml-100k", cache: str | Path | None = None, source: str | Path | None = None,
          download: Callable[[Path], Path] = pip_download, log: Callable[[str], None] = print) -> Path:
    """Make ``cache`` (default :func:`default_cache`) hold dataset ``name``; return the directory.

    Does nothing if it is already there. ``download(tmpdir) -> wheel`` is the
    network step (injectable for tests); ``source`` skips it.
    """
    if name not in FETCHABLE:
        raise DataError(f"cannot fetch {name!r}: fetchable datasets are {list(FETCHABLE)} "
                        f"(others: pass their files with `data prepare --path`)")
    cache = Path(cache).expanduser() if cache else default_cache(name)
    if is_complete(cache):
        log(f"{name} is already in {cache}; nothing to do")
        return cache
    if cache.exists() and (not cache.is_dir() or any(cache.iterdir())):
        raise DataError(f"{cache} exists but does not hold {name}; remove it or choose another --cache")
    cache.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name per call: concurrent fetches (processes, or nodes sharing a home) never share it
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the cache is as readable as a mkdir'd one
    try:
        if source is not None:
            log(f"copying {name} from {source}")
            _copy_source(Path(source).expanduser(), tmp)
        else:
            log(f"downloading {RECBOLE_SPEC} (bundles {name}) with pip")
            with tempfile.TemporaryDirectory(prefix="rlhf-ray-fetch-") as d:
                _extract_wheel(download(Path(d)), tmp)
        raw = read_movielens(tmp)  # refuse to cache something we cannot read
        try:
            if cache.is_dir():
                cache.rmdir()  # empty when checked above, unless a concurrent fetch filled it since
            tmp.rename(cache)
        except OSError:
            if not is_complete(cache):  # not a concurrent fetch that won the race
                raise
        c = raw.counts()
        log(f"{name}: {c['users']} users, {c['items']} items, {c['interactions']} ratings -> {cache}")
        return cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
