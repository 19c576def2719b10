"""bench/sft_ablation.py end to end on synthetic data: each variant starts from the right place
(its own pre-training, the seed's, or none), differs from the seed's SFT in its one setting,
and lands in one table with paired comparisons against the seed's SFT."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 1.5 min: four SFT trainings; the shared harness runs by default in test_lpo_ablation_bench
def test_sft_ablation_smoke_writes_one_table(tmp_path):
    res, work = tmp_path / "results", tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "bench" / "sft_ablation.py"), "--smoke", "--seeds", "0",
           "--variants", "user_tokens,page_order_gt,no_pretrain", "--work", str(work), "--results", str(res)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((res / "sft_ablation_smoke.json").read_text())
    assert set(doc["rows"]) == {"sft", "user_tokens", "page_order_gt", "no_pretrain"}
    for row in doc["rows"].values():
        m = row["metrics"]["ndcg@10"]
        assert m["n"] == doc["users"] and m["lo"] <= m["mean"] <= m["hi"]
        assert row["valid_ndcg@10"]["n_seeds"] == 1 and row["valid_tail_recall@20"]["n_seeds"] == 1
    assert set(doc["comparisons"]) == {"user_tokens", "page_order_gt", "no_pretrain"}
    run = work / "seed0"
    manifest = lambda v: json.loads((run / "sft_ablation" / v / "manifest.json").read_text())  # noqa: E731
    seed_pretrain = json.loads((run / "pretrain" / "manifest.json").read_text())["id"]
    own = json.loads((run / "sft_ablation" / "user_tokens-pretrain" / "manifest.json").read_text())
    assert manifest("user_tokens")["parent"]["id"] == own["id"] and manifest("user_tokens")["vocab"]["n_users"] > 0
    assert manifest("page_order_gt")["parent"]["id"] == seed_pretrain
    assert manifest("page_order_gt")["config"]["page_order"] == "ground_truth"
    assert not manifest("no_pretrain").get("parent")
    seed_sft = json.loads((run / "sft" / "manifest.json").read_text())
    assert seed_sft["config"]["page_order"] == "time" and seed_sft["vocab"]["n_users"] == 0
    # a second run reuses every checkpoint (same configs): nothing is trained again
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert again.returncode == 0 and "trained in" not in again.stdout, again.stdout[-2000:]


def test_every_variant_makes_a_valid_pipeline_config():
    """Each variant's configs load (a history length goes to the shared prompt: 'history_20' set
    only in the sft section was refused by the pipeline's one-prompt rule)."""
    import yaml

    sys.path.insert(0, str(ROOT / "bench"))
    from protocol_table import protocol_config
    from sft_ablation import VARIANTS, variant_configs

    raw = protocol_config(str(ROOT / "bench" / "configs" / "ml-100k-selected.yaml"), "loo", 0, False)
    for name in VARIANTS:
        cfgs = variant_configs(yaml.safe_load(yaml.safe_dump(raw)), name, smoke=False)
        want = 20 if name == "history_20" else 50
        assert cfgs["sft"].max_history == want and cfgs["lpo"].max_history == want, name
    assert variant_configs(yaml.safe_load(yaml.safe_dump(raw)), "dropout_0.3", False)["pretrain"].model.dropout == 0.3
    page_loss = {n: variant_configs(yaml.safe_load(yaml.safe_dump(raw)), n, False)["sft"]
                 for n in ("rank_weight_0.5", "rank_weight_0.1", "rank_weight_0", "stride_10")}
    assert [page_loss[n].rank_weight for n in page_loss] == [0.5, 0.1, 0.0, 0.25]  # stride_10 keeps the shipped 0.25
    assert all(c.next_weight == 1.0 and c.page_cuts == 2 for c in page_loss.values())  # one change each
