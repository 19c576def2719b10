"""Bench results carry their provenance and are strict JSON (bench/provenance.py, bench/ppo_common.py)."""
import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

# The benches that must write through provenance.Run (no hand-rolled JSON writers).
PROVENANCE_BENCHES = ("ppo_common.py", "ppo_ml100k.py", "ppo_throughput.py", "ppo_vs_trl_grpo.py", "lpo_ml100k.py",
                      "lpo_vs_dpo_memory.py", "reward_ml100k.py", "serve_load.py", "sft_throughput.py")


def strict_load(text: str):
    """json.loads that rejects NaN / Infinity (which Python's json accepts by default)."""
    def bad(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=bad)


@pytest.fixture
def inputs(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "manifest.json").write_text(json.dumps({"stage": "sft", "id": "sft-x"}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "stats.json").write_text(json.dumps({"fingerprint": "abc123"}))
    return ck, data


def test_result_has_provenance_and_is_strict_json(tmp_path, inputs):
    from provenance import Run

    ck, data = inputs
    run = Run(inputs={"sft": ck, "data": data}, argv=["bench/some_bench.py", "--steps", "3"])
    path = run.write("some_bench", {"value": float("nan"), "nested": {"inf": float("inf"), "ok": 1.5}},
                     results_dir=tmp_path / "results")
    assert path == tmp_path / "results" / "some_bench.json"
    doc = strict_load(path.read_text())
    assert doc["value"] is None and doc["nested"] == {"inf": None, "ok": 1.5}
    prov = doc["provenance"]
    assert re.fullmatch(r"[0-9a-f]{40}", prov["git"]["commit"] or ""), prov["git"]
    assert isinstance(prov["git"]["dirty"], bool)
    assert prov["command"].endswith("bench/some_bench.py --steps 3")
    assert len(prov["load_before"]) == 3 and len(prov["load_after"]) == 3
    assert prov["machine"]["cpu_model"] and prov["machine"]["cpus"] >= 1
    assert prov["machine"]["torch_cpu_capability"] and "ATEN_CPU_CAPABILITY" in prov["machine"]["env_kernels"]
    assert prov["inputs"]["sft"] == {"path": str(ck), "kind": "checkpoint", "stage": "sft",
                                     "manifest_sha256": prov["inputs"]["sft"]["manifest_sha256"],
                                     "content_sha256": None, "weights_sha256": None}  # a manifest without files
    assert len(prov["inputs"]["sft"]["manifest_sha256"]) == 64
    assert prov["inputs"]["data"]["fingerprint"] == "abc123"
    assert not list((tmp_path / "results").glob(".*tmp*"))  # written atomically: no temporary left


def test_a_checkpoint_rewritten_with_the_same_files_keeps_its_content_id(tmp_path):
    """Two exports of the same weights (another time, another machine) differ in manifest_sha256
    but share content_sha256 and weights_sha256; other weights change both."""
    from provenance import input_id

    files = {"model.safetensors": "a" * 64, "tokenizer/tokenizer.json": "b" * 64}
    ids = []
    for name, created, weights in (("one", "2026-12-01", "a" * 64), ("two", "2026-12-04", "a" * 64),
                                   ("three", "2026-12-04", "c" * 64)):
        ck = tmp_path / name
        ck.mkdir()
        manifest = {"stage": "sft", "created": created, "files": {**files, "model.safetensors": weights}}
        (ck / "manifest.json").write_text(json.dumps(manifest))
        ids.append(input_id(ck))
    one, two, three = ids
    assert one["manifest_sha256"] != two["manifest_sha256"]
    assert one["content_sha256"] == two["content_sha256"] and one["weights_sha256"] == two["weights_sha256"] == "a" * 64
    assert three["content_sha256"] != one["content_sha256"] and three["weights_sha256"] == "c" * 64


def test_smoke_results_go_outside_the_repository(monkeypatch):
    import ppo_common

    assert ppo_common.results_dir(False) == BENCH / "results"
    assert BENCH.parent not in ppo_common.results_dir(True).resolve().parents


@pytest.mark.parametrize("name", PROVENANCE_BENCHES)
def test_bench_writes_through_provenance(name):
    src = (BENCH / name).read_text()
    assert "write_text(json.dumps" not in src and "json.dump(" not in src, f"{name} writes JSON by hand"
    assert "write_results(" not in src, f"{name} uses the old writer"
    if name != "ppo_common.py":
        assert "run.write(" in src and "Run(" in src, f"{name} does not write through provenance.Run"


def test_git_state_is_read_when_the_bench_starts(tmp_path, monkeypatch):
    """A commit made while a long bench runs must not be credited with its figures."""
    import provenance

    states = iter([{"commit": "a" * 40, "dirty": False, "dirty_files": [], "branch": "main"},
                   {"commit": "b" * 40, "dirty": True, "dirty_files": ["x.py"], "branch": "main"}])
    monkeypatch.setattr(provenance, "git_info", lambda: next(states))
    run = provenance.Run(argv=["bench/long.py"])
    doc = json.loads(run.write("long", {}, results_dir=tmp_path).read_text())
    assert doc["provenance"]["git"]["commit"] == "a" * 40
    assert doc["provenance"]["git_at_end"] == {"commit": "b" * 40, "dirty": True, "dirty_files": ["x.py"],
                                               "branch": "main"}


def test_no_git_at_end_when_nothing_changed(tmp_path):
    from provenance import Run

    doc = json.loads(Run(argv=["bench/short.py"]).write("short", {}, results_dir=tmp_path).read_text())
    assert "git_at_end" not in doc["provenance"]


def test_a_plain_file_input_is_named_by_its_content(tmp_path):
    """A peer's top-100 list (no manifest) is recorded by its sha256, so two results that read
    different lists do not look alike."""
    from provenance import input_id

    a, b = tmp_path / "GRU4Rec.npz", tmp_path / "SASRec.npz"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    ia, ib = input_id(a), input_id(b)
    assert ia["kind"] == "file" and len(ia["sha256"]) == 64 and ia["sha256"] != ib["sha256"]
    assert input_id(tmp_path / "missing.npz") == {"path": str(tmp_path / "missing.npz"), "kind": "other",
                                                  "exists": False}
