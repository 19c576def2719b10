"""bench/gil_contention.py in smoke mode: the three settings are measured in interleaved rounds
and land in one JSON with provenance (counted, never timed)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gil_contention_smoke_writes_every_setting(tiny_sft, synth_data, tmp_path):
    out = tmp_path / "gil.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gil_contention.py"), "--smoke", "--batch", "4",
           "--checkpoint", str(tiny_sft), "--data", str(synth_data), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert set(doc["ms_per_batch"]) == {"alone", "busy_thread", "busy_process"}
    for s in doc["ms_per_batch"].values():
        assert s["n"] == doc["rounds"] == 2 and 0 < s["min"] <= s["median"] <= s["max"]
    assert doc["ratio_to_alone"]["alone"] == 1.0
    assert doc["table_markdown"].count("\n") == 1 + 3
    assert doc["provenance"]["command"] and doc["provenance"]["inputs"]["checkpoint"]


def test_gil_contention_rejects_a_bad_count(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "gil_contention.py"), "--checkpoint", "x", "--data", "y",
           "--rounds", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "--rounds" in proc.stderr
