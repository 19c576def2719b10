"""Shared storage (rlhf_ray.storage): every stage reads and writes a location, a local path or a
pyarrow.fs URI. ``file://`` URIs take the object-store code path (staged writes published with
the marker last, a per-node cache for reads), so these tests exercise what s3:// does."""
import json
import shutil

import pytest
import torch

from rlhf_ray import storage
from rlhf_ray.checkpoint import MANIFEST, load_checkpoint, verify_checkpoint
from rlhf_ray.errors import CheckpointError


@pytest.fixture
def node_cache(tmp_path, monkeypatch):
    """A fresh per-node cache, as on another machine of the cluster."""
    cache = tmp_path / "node-cache"
    monkeypatch.setenv("RLHF_RAY_CACHE", str(cache))
    return cache / "storage"


def test_locations():
    assert storage.normalize("file:///a/b/") == "file:///a/b"
    assert storage.join("s3://bucket/runs", "sft", MANIFEST) == "s3://bucket/runs/sft/manifest.json"
    assert storage.sibling("s3://bucket/runs/ppo", ".state") == "s3://bucket/runs/ppo.state"
    assert storage.basename("file:///x/runs/sft") == "sft"
    assert not storage.is_uri("runs/sft") and storage.normalize("runs/sft").startswith("/")


def test_published_checkpoint_reads_back_through_the_node_cache(tiny_sft, tmp_path, node_cache):
    uri = f"file://{tmp_path}/bucket/sft"
    storage.upload(tiny_sft, uri, marker=MANIFEST)
    manifest = verify_checkpoint(uri)  # downloaded into this node's cache, hashes checked
    assert manifest["id"] == json.loads((tiny_sft / MANIFEST).read_text())["id"]
    copy = storage.local_copy(uri, MANIFEST)
    assert copy.is_relative_to(node_cache) and (copy / "model.safetensors").is_file()
    stamp = (copy / "model.safetensors").stat().st_mtime_ns
    assert storage.local_copy(uri, MANIFEST) == copy
    assert (copy / "model.safetensors").stat().st_mtime_ns == stamp, "an unchanged location is not copied again"
    ck = load_checkpoint(uri)
    ref = load_checkpoint(tiny_sft)
    assert all(torch.equal(a, b) for a, b in zip(ck.model.state_dict().values(), ref.model.state_dict().values()))
    # the location changes (a new manifest): the next reader gets the new copy
    edited = tmp_path / "edited"
    shutil.copytree(tiny_sft, edited)
    m = json.loads((edited / MANIFEST).read_text())
    m["id"] = "sft-republished"
    (edited / MANIFEST).write_text(json.dumps(m))
    storage.upload(edited, uri, marker=MANIFEST)
    assert json.loads((storage.local_copy(uri, MANIFEST) / MANIFEST).read_text())["id"] == "sft-republished"


def test_concurrent_readers_on_a_node_share_one_copy(tiny_sft, tmp_path, node_cache):
    """Several actors of one node open the same URI at once (PPO's roles all read the SFT
    checkpoint): one downloads, the others wait for it and use the same copy."""
    from concurrent.futures import ThreadPoolExecutor

    uri = f"file://{tmp_path}/bucket/sft"
    storage.upload(tiny_sft, uri, marker=MANIFEST)
    with ThreadPoolExecutor(4) as pool:
        paths = set(pool.map(lambda _: storage.local_copy(uri, MANIFEST), range(4)))
    (path,) = paths
    verify_checkpoint(path)
    assert [p.name for p in path.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_interrupted_publish_never_reads_as_complete(tiny_sft, tmp_path, node_cache, monkeypatch):
    uri = f"file://{tmp_path}/bucket/sft"
    storage.upload(tiny_sft, uri, marker=MANIFEST)
    verify_checkpoint(uri)
    copied = []
    real_copy = storage._copy_file

    def killed_midway(src_fs, src, dst_fs, dst):  # the publishing process dies after two files
        if len(copied) == 2:
            raise KeyboardInterrupt("killed")
        copied.append(dst)
        real_copy(src_fs, src, dst_fs, dst)

    monkeypatch.setattr(storage, "_copy_file", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        storage.upload(tiny_sft, uri, marker=MANIFEST)
    monkeypatch.setattr(storage, "_copy_file", real_copy)
    assert not any(c.endswith(MANIFEST) for c in copied)
    assert storage.read_text(storage.join(uri, MANIFEST)) is None
    shutil.rmtree(node_cache)  # another node: nothing cached
    with pytest.raises(CheckpointError, match="not found|no manifest"):
        verify_checkpoint(uri)


def test_staged_publishes_the_directory_and_its_siblings(tmp_path):
    uri = f"file://{tmp_path}/bucket/runs/x"
    with storage.staged(uri) as local:
        assert not storage.is_uri(local) and local.name == "x"
        local.mkdir()
        (local / "a.txt").write_text("a")
        (local / MANIFEST).write_text("{}")
        (local.parent / "x.logs").mkdir()
        (local.parent / "x.logs" / "metrics.jsonl").write_text("{}\n")
        (local.parent / "x.pairs.parquet").write_bytes(b"pq")
        (local.parent / "unrelated").write_text("stays local")
    bucket = tmp_path / "bucket" / "runs"
    assert sorted(p.name for p in bucket.iterdir()) == ["x", "x.logs", "x.pairs.parquet"]
    assert (bucket / "x" / "a.txt").read_text() == "a" and (bucket / "x.logs" / "metrics.jsonl").is_file()
    assert not local.parent.exists(), "the staging directory is removed"
    # a failing block still publishes its logs; the error is the block's
    with pytest.raises(ValueError, match="stage failed"):
        with storage.staged(f"file://{tmp_path}/bucket/runs/y") as local:
            (local.parent / "y.logs").mkdir()
            (local.parent / "y.logs" / "metrics.jsonl").write_text("{}\n")
            raise ValueError("stage failed")
    assert (bucket / "y.logs" / "metrics.jsonl").is_file() and not (bucket / "y").exists()
    # a local path is used as it is
    with storage.staged(tmp_path / "plain") as local:
        assert local == tmp_path / "plain"


@pytest.mark.parametrize("uri", [False, True], ids=["local-path", "file-uri"])
def test_stage_cli_reads_and_writes_storage_locations(synth_data, tmp_path, node_cache, uri):
    """`rlhf-ray sft` with --data and --out given as locations: the checkpoint and its logs land
    there, and a reader on another node (an empty cache) loads the same weights."""
    from rlhf_ray.cli import main

    shared = tmp_path / "shared"
    shutil.copytree(synth_data, shared / "data")
    loc = (lambda p: f"file://{shared}/{p}") if uri else (lambda p: str(shared / p))
    rc = main(["sft", "--data", loc("data"), "--out", loc("runs/sft"), "--model.n-layer", "1",
               "--model.n-embd", "32", "--model.n-head", "2", "--model.n-positions", "96",
               "--model.text-vocab-size", "300", "--train.max-steps", "2", "--train.epochs", "1",
               "--train.batch-size", "16", "--max-history", "20", "--page-size", "5",
               "--no-train.progress", "--no-train.tensorboard"])
    assert rc == 0
    verify_checkpoint(shared / "runs" / "sft")
    lines = (shared / "runs" / "sft.logs" / "metrics.jsonl").read_text().splitlines()
    assert lines and json.loads(lines[-1])["step"] == 2
    shutil.rmtree(node_cache, ignore_errors=True)
    a, b = load_checkpoint(loc("runs/sft")), load_checkpoint(shared / "runs" / "sft")
    assert a.id == b.id
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_pipeline_on_a_storage_uri_runs_then_skips(tmp_path, node_cache, capsys):
    """`rlhf-ray pipeline --out file://...`: data and a stage written to storage; a rerun from an
    empty node cache finds the complete checkpoint there and skips it."""
    from rlhf_ray.cli import main

    run = tmp_path / "bucket" / "run"
    args = ["pipeline", "--smoke", "--stages", "data,pretrain", "--out", f"file://{run}"]
    assert main(args) == 0
    verify_checkpoint(run / "pretrain")
    assert (run / "data" / "stats.json").is_file() and (run / "pretrain.logs" / "metrics.jsonl").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["pretrain"]["checkpoint"] == f"file://{run}/pretrain"
    shutil.rmtree(node_cache)
    capsys.readouterr()
    assert main(args) == 0
    assert "pretrain: complete checkpoint at file://" in capsys.readouterr().out
