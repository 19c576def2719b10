"""bench/shortlist_quality.py on a tiny SFT checkpoint: whole-catalogue rows are the reference (every
page equal, no interval), a shortlist of the whole catalogue changes no page, a page-sized shortlist
changes some, and comparisons with SFT are made for the other policies only."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import shortlist_quality as sq  # noqa: E402


def test_rows_against_the_whole_catalogue_and_sft(tiny_sft, synth_data, tmp_path):
    run = tmp_path / "work" / "seed0"
    run.mkdir(parents=True)
    (run / "data").symlink_to(synth_data)
    (run / "sft").symlink_to(tiny_sft)
    (run / "again").symlink_to(tiny_sft)  # a second "policy": the same weights as SFT
    n_items = 120
    assert sq.main(["--work", str(tmp_path / "work"), "--seeds", "0", "--policies", "sft,again",
                    "--shortlists", f"10,{n_items}", "--results", str(tmp_path / "res")]) == 0
    doc = json.loads((tmp_path / "res" / "shortlist_quality.json").read_text())
    assert doc["shortlists"] == [0, 10, n_items] and doc["provenance"]["command"]
    for pol in ("sft", "again"):
        whole, short, full = doc["rows"][pol]
        assert whole["same_pages"] == 1.0 and full["same_pages"] == 1.0
        assert short["same_pages"] < 1.0  # 10 = the page size: the page is the ranking's top 10, reordered
        assert full["page_ndcg@10"] == whole["page_ndcg@10"]
        assert short["page_ndcg@10_vs_whole"]["n"] == doc["users"] > 0
    assert "page_ndcg@10_vs_sft" in doc["rows"]["again"][1]
    assert doc["rows"]["again"][1]["page_ndcg@10_vs_sft"]["diff"] == 0.0  # same weights, same pages
    assert "| again | 10 |" in doc["markdown"]


def test_missing_runs_are_named(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "shortlist_quality.py"), "--work", str(tmp_path),
                           "--seeds", "0", "--policies", "lpo"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and str(tmp_path / "seed0" / "lpo") in proc.stderr
