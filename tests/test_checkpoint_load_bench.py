"""bench/checkpoint_load.py: both modes measured in fresh processes, alternating, into one JSON
with provenance (counted, never timed); a path that is not a checkpoint is refused."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoint_load_bench_writes_both_modes(tiny_sft, tmp_path):
    out = tmp_path / "load.json"
    cmd = [sys.executable, str(ROOT / "bench" / "checkpoint_load.py"), "--checkpoints", str(tiny_sft),
           "--repeats", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    for mode in ("lazy", "built"):
        s = row[f"{mode}_s"]
        assert s["n"] == 1 and 0 < s["min"] <= s["median"] <= s["max"]
    assert len(row["load_1min"]) == 2 and row["items"] > 0
    assert doc["markdown"].count("\n") == 2
    assert doc["provenance"]["command"] and doc["provenance"]["inputs"]["checkpoint_0"]


def test_checkpoint_load_bench_refuses_a_directory_without_a_manifest(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "checkpoint_load.py"), "--checkpoints", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "not a checkpoint directory" in proc.stderr
