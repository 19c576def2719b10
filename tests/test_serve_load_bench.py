"""bench/serve_load.py end to end in smoke mode through Ray's HAProxy ingress: its own load
client (raw asyncio HTTP/1.1) gets every page, the replica's batches are counted per phase,
and each phase is set against the in-process ceiling at those batch sizes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 70 s each; the CLI test covers the HAProxy ingress in the default suite
@pytest.mark.parametrize("separate", [False, True], ids=["model_in_replica", "separate_model"])
def test_serve_load_smoke_through_haproxy(tiny_sft, synth_data, tmp_path, separate):
    out = tmp_path / "serve_load_haproxy.json"
    cmd = [sys.executable, str(ROOT / "bench" / "serve_load.py"), "--smoke", "--checkpoint", str(tiny_sft),
           "--data", str(synth_data), "--ingress", "haproxy", "--batch-wait-ms", "2", "--out", str(out),
           *(["--separate-model"] * separate)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["settings"]["ingress"] == "haproxy" and doc["settings"]["separate_model"] is separate
    assert [r["concurrency"] for r in doc["results"]] == [1, 4]
    for r in doc["results"]:
        assert r["errors"] == 0 and r["answered"] > 0, r
        assert sum(int(s) * n for s, n in r["batch_size_histogram"].items()) == r["answered"]
        assert r["p50_ms"] <= r["p99_ms"] and r["ratio"] > 0
        assert r["replica_stage_ms"]["model"] > 0 and r["replica_stage_ms"]["handoff"] >= 0, r["replica_stage_ms"]
    assert set(doc["results"][0]["batch_size_histogram"]) == {"1"}  # one client: never company
    assert doc["table_markdown"].count("\n") == 1 + len(doc["results"])
