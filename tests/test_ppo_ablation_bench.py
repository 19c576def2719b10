"""bench/ppo_ablation.py end to end on synthetic data: each variant is PPO from the seed's own SFT
and reward with its one change in the config, the table carries the PPO targets' columns
(page_ild@10 among them) with paired comparisons against SFT, and a rerun trains nothing."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ppo_ablation_smoke_writes_one_table(tmp_path):
    res, work = tmp_path / "results", tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "bench" / "ppo_ablation.py"), "--smoke", "--seeds", "0",
           "--variants", "base,default,ptx_1", "--work", str(work), "--results", str(res)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((res / "ppo_ablation_smoke.json").read_text())
    assert set(doc["rows"]) == {"sft", "base", "default", "ptx_1"}
    for name, row in doc["rows"].items():
        for c in ("page_ndcg@10", "recall@20", "page_ild@10", "ndcg@10"):
            m = row["metrics"][c]
            assert m["n"] == doc["users"] and m["lo"] <= m["mean"] <= m["hi"], c
        assert row["valid_ndcg@10"]["n_seeds"] == 1 and row["valid_page_ild@10"]["n_seeds"] == 1  # whole split
    # test comparisons with SFT, then the same columns on the validation users: against SFT and the shipped default
    assert set(doc["comparisons"]["ptx_1"]) == {"page_ndcg@10", "recall@20", "page_ild@10", "ndcg@10", "valid",
                                                "valid_vs_default"}
    assert set(doc["comparisons"]["ptx_1"]["valid_vs_default"]) == {"page_ndcg@10", "recall@20", "page_ild@10",
                                                                    "ndcg@10"}
    assert "valid_vs_default" not in doc["comparisons"]["default"]
    run = work / "seed0"
    manifest = lambda v: json.loads((run / "ppo_ablation" / v / "manifest.json").read_text())  # noqa: E731
    seed_sft = json.loads((run / "sft" / "manifest.json").read_text())["id"]
    assert manifest("ptx_1")["parent"]["id"] == seed_sft and manifest("ptx_1")["config"]["policy"]["ptx_coef"] == 1.0
    assert manifest("base")["config"]["policy"]["ptx_coef"] == 0.0
    assert manifest("base")["config"]["policy"]["ptx_page_coef"] == 0.0  # the shipped page term set back too
    assert manifest("base")["config"]["reward"]["diversity_weight"] == 1.0
    shipped = json.loads((run / "ppo" / "manifest.json").read_text())["config"] if (run / "ppo").is_dir() else \
        manifest("default")["config"]
    assert shipped["policy"]["ptx_coef"] == 1.0 and shipped["reward"]["diversity_weight"] == 30.0  # shipped
    assert shipped["policy"]["ptx_page_coef"] == 1.0 and shipped["policy"]["ptx_page_slots"] == 1
    assert "| page_ild@10 vs SFT |" in doc["markdown"].splitlines()[0] + "|"
    assert set(doc["notes"]) == {"base", "default", "ptx_1"}  # the monitor's alerts, one count per seed
    assert all(n.startswith("hacking-monitor alerts per seed ") and n.split()[-1].isdigit()
               for n in doc["notes"].values()) and f"* ptx_1: {doc['notes']['ptx_1']}" in doc["markdown"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert again.returncode == 0 and "trained in" not in again.stdout, again.stdout[-2000:]
    # a variant's directory trained with another config (and its resumable state) is set aside,
    # not resumed or overwritten, and the variant is trained again
    stale = run / "ppo_ablation" / "ptx_0.1"
    shutil.copytree(run / "ppo_ablation" / "ptx_1", stale)
    (run / "ppo_ablation" / "ptx_0.1.state").mkdir()
    cmd[cmd.index("base,default,ptx_1")] = "ptx_0.1"
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert third.returncode == 0, third.stderr[-3000:]
    assert manifest("ptx_0.1")["config"]["policy"]["ptx_coef"] == 0.1
    aside = [p for p in (run / "ppo_ablation").iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["ptx_0.1", "ptx_0.1.state"]
    assert json.loads((aside[0] / "ptx_0.1" / "manifest.json").read_text())["config"]["policy"]["ptx_coef"] == 1.0


def test_monitor_note_reads_each_seeds_alert_count(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from ppo_ablation import monitor_note

    cks = []
    for seed, n in enumerate([0, 2, 1]):
        ck = tmp_path / f"seed{seed}"
        ck.mkdir()
        (ck / "manifest.json").write_text(json.dumps({"metrics": {"hacking_alerts": n}}))
        cks.append(ck)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"metrics": {}}))  # a run from before the monitor
    assert monitor_note("v", cks) == "hacking-monitor alerts per seed 0, 2, 1"
    assert monitor_note("v", [tmp_path / "old"]) == "hacking-monitor alerts per seed ?"


def test_diversity_variants_change_only_the_category_entropy_weight():
    sys.path.insert(0, str(ROOT / "bench"))
    from ppo_ablation import HIT3_LR_HALF_DIV4, VARIANTS

    shipped = yaml.safe_load((ROOT / "rlhf_ray" / "configs" / "ml-100k.yaml").read_text())["ppo"]
    ship = VARIANTS["hit3_lr_half_div30_pp1.0_s1"][1]  # shipped (README "A larger category-entropy weight")
    assert ship["reward"] == shipped["reward"]
    assert {k: ship["policy"][k] for k in ("ptx_coef", "ptx_page_coef", "ptx_page_slots")} == \
        {k: shipped["policy"][k] for k in ("ptx_coef", "ptx_page_coef", "ptx_page_slots")}
    assert HIT3_LR_HALF_DIV4["policy"]["train"]["lr"] == pytest.approx(shipped["policy"]["train"]["lr"])
    for w in (5, 6):
        changed = VARIANTS[f"hit3_lr_half_div{w}"][1]
        assert changed["reward"] == {**HIT3_LR_HALF_DIV4["reward"], "diversity_weight": float(w)}
        assert changed["policy"] == HIT3_LR_HALF_DIV4["policy"]
    for name, (_, changed) in VARIANTS.items():  # the page-term variants: the weight-5 section + their fields
        if "_pp" in name:
            assert changed["reward"]["hit_weight"] == 3.0 and changed["policy"]["ptx_coef"] == 1.0
            assert changed["policy"]["ptx_page_coef"] == float(name.split("_pp")[1].split("_")[0])
            assert changed["policy"].get("ptx_page_slots", 0) == (1 if name.endswith("_s1") else 0)


def test_reward_variants_change_only_their_reward_field_of_the_shipped_section(tmp_path):
    """shipped_clip* / shipped_ens3*: the weight-15 section (shipped when they were measured) plus clip, members or
    the uncertainty penalty; SHIPPED_NOW is the config's section; a seed's members resolve to that seed's run."""
    sys.path.insert(0, str(ROOT / "bench"))
    from ppo_ablation import BASE, SHIPPED_DIV15, SHIPPED_NOW, VARIANTS, ppo_config

    from rlhf_ray.config import deep_merge

    shipped = yaml.safe_load((ROOT / "rlhf_ray" / "configs" / "ml-100k.yaml").read_text())["ppo"]
    assert SHIPPED_NOW == VARIANTS["hit3_lr_half_div30_pp1.0_s1"][1]
    assert SHIPPED_DIV15 == VARIANTS["hit3_lr_half_div15_pp1.0_s1"][1]
    assert SHIPPED_NOW["reward"] == shipped["reward"]
    extra = {"shipped_clip1": {"clip": 1.0}, "shipped_clip2": {"clip": 2.0},
             "shipped_ens3": {"members": ["{run}/reward_m1", "{run}/reward_m2"]},
             "shipped_ens3_unc1": {"members": ["{run}/reward_m1", "{run}/reward_m2"], "uncertainty_coef": 1.0},
             "shipped_ens3_unc3": {"members": ["{run}/reward_m1", "{run}/reward_m2"], "uncertainty_coef": 3.0}}
    for name, fields in extra.items():
        assert VARIANTS[name][1] == deep_merge(SHIPPED_DIV15, {"reward": fields}), name
    run = tmp_path / "seed4"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"ppo": shipped}))
    cfg = ppo_config(run, "shipped_ens3_unc1", smoke=False)
    assert cfg.reward.members == [str(run / "reward_m1"), str(run / "reward_m2")]
    assert cfg.reward.uncertainty_coef == 1.0 and cfg.reward.diversity_weight == 15.0
    assert VARIANTS["shipped_ens3"][1]["reward"]["members"][0] == "{run}/reward_m1"  # the template is not consumed
    assert "members" not in BASE["reward"]
