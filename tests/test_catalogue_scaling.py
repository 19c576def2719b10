"""bench/catalogue_scaling.py --smoke-test: every phase of every size runs in its own process and
the JSON holds every figure; a phase that does not fit its memory limit is reported, not fatal.
No timing is asserted (the box is shared)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "catalogue_scaling.py"
PHASE_FIELDS = {
    "prepare": ["prepare_s", "generate_s", "build_write_s", "prepared"],
    "infer": ["init_s", "page_ms", "prompt_ms_per_page", "decode_ms_per_page", "eval_ms_per_user", "eval_users",
              "n_items", "page_ms_shortlist", "shortlist_same_pages"],
    "sft_full": ["step_s", "fwd_bwd_s", "optimizer_s", "losses", "n_items", "rss_before_steps_gb"],
    "sft_sampled": ["step_s", "fwd_bwd_s", "optimizer_s", "losses", "n_items", "sampled_softmax"],
}


def _run(tmp_path, *extra):
    out, png = tmp_path / "cs.json", tmp_path / "cs.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke-test", "--out", str(out), "--plot", str(png),
                           "--work", str(tmp_path / "work"), *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), png, proc.stdout


def _check(doc: dict, sizes: list[int]) -> None:
    assert doc["sizes"] == sizes and [r["items"] for r in doc["rows"]] == sizes
    for row in doc["rows"]:
        size = row["items"]
        for phase, fields in PHASE_FIELDS.items():
            ph = row[phase]
            assert ph["ok"], (size, phase, ph)
            for f in fields + ["wall_s", "child_peak_rss_gb", "load_at_start", "returncode"]:
                assert f in ph, (size, phase, f)
            assert 0.05 < ph["child_peak_rss_gb"] < doc["settings"]["mem_limit_gb"]
            assert ph["returncode"] == 0
        # the catalogue is exactly the requested size (cold items kept), in the data and in the model
        assert row["prepare"]["prepared"]["items"] == size
        assert row["infer"]["n_items"] == row["sft_full"]["n_items"] == row["sft_sampled"]["n_items"] == size
        assert row["prepare"]["prepared"]["interactions"] > 0.8 * doc["interactions_target"]
        assert row["infer"]["page_ms"] > 0 and row["infer"]["eval_ms_per_user"] > 0
        assert row["infer"]["eval_users"] == doc["settings"]["eval_users"]
        assert row["infer"]["shortlist"] == doc["settings"]["shortlist"] == 16 and row["infer"]["page_ms_shortlist"] > 0
        assert 0 <= row["infer"]["shortlist_same_pages"] <= 1
        for phase in ("sft_full", "sft_sampled"):
            assert row[phase]["step_s"] > 0 and all(math.isfinite(x) for x in row[phase]["losses"])
        assert row["sft_sampled"]["sampled_softmax"] == doc["settings"]["sampled"]
    assert doc["failures"] == []
    assert all(f"| {s} |" in doc["table_markdown"] for s in sizes)
    assert doc["provenance"]["load_before"] and doc["provenance"]["command"]


@pytest.mark.slow  # half a minute; the default suite keeps the out-of-memory phase test below
def test_smoke_run_reports_every_phase(tmp_path):
    doc, png, stdout = _run(tmp_path, "--sizes", "120")
    _check(doc, [120])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| items |" in stdout


@pytest.mark.slow
def test_smoke_run_over_two_sizes_reports_their_growth(tmp_path):
    doc, _, _ = _run(tmp_path)  # the --smoke-test sizes: 60, 240
    _check(doc, [60, 240])
    assert doc["growth"]["items_ratio"] == 4 and doc["growth"]["sft_full.step_s"] > 0


def test_a_phase_that_runs_out_of_memory_is_reported_with_where(tmp_path):
    doc, _, _ = _run(tmp_path, "--sizes", "60", "--mem-limit-gb", "0.05")
    ph = doc["rows"][0]["prepare"]
    assert not ph["ok"] and ph["returncode"] != 0 and ph["error"] and "where" in ph
    assert "infer" not in doc["rows"][0]  # nothing runs on data that was not prepared
    assert len(doc["failures"]) == 1 and "prepare" in doc["failures"][0] and "failed" in doc["table_markdown"]
