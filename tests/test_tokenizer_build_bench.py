"""bench/tokenizer_build.py: the previous revision's train_tokenizer and the current one build
byte-identical tokenizers (same ids, same files), timed in alternating fresh processes into one JSON
with provenance (counted, never timed); bad arguments exit 2."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tokenizer_build_bench_builds_identical_tokenizers(tmp_path):
    out = tmp_path / "tb.json"
    cmd = [sys.executable, str(ROOT / "bench" / "tokenizer_build.py"), "--items", "300", "--repeats", "1",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert row["identical_files"] is True and row["items"] == 300 and row["size"] > 300
    assert row["before_s"]["n"] == row["after_s"]["n"] == 1 and len(row["load_1min"]) == 2
    assert doc["provenance"]["command"] and doc["before_revision"]


def test_tokenizer_build_bench_refuses_bad_arguments(tmp_path):
    bench = str(ROOT / "bench" / "tokenizer_build.py")
    for args, what in ((["--items", "ten"], "--items"), (["--before", "no-such-rev"], "--before")):
        proc = subprocess.run([sys.executable, bench, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 2 and what in proc.stderr, proc.stderr
