"""The real CLI in a subprocess: the smoke pipeline end to end, resume-by-skip, and bad input."""
import json
import math
import shutil

import pandas as pd
import pytest
import torch

from rlhf_ray.checkpoint import verify_checkpoint
from tests.conftest import run_cli as run


# what each stage's summary entry must hold (on top of "seconds" and "checkpoint")
STAGE_KEYS = {
    "pretrain": {"train/steps", "train/loss", "val/rating_rmse"},
    "sft": {"train/steps", "train/loss", "val/ndcg@10", "val/recall@10"},
    "reward": {"train/steps", "train/loss", "val/acc", "norm/page_mean", "norm/page_std"},
    "ppo": {"iterations", "reward/total", "policy/steps", "critic/steps", "val/ndcg@10"},
    "lpo": {"train/steps", "train/loss", "val/ndcg@10", "val/tail_ndcg@10"},
}


def _weights(path):
    from rlhf_ray.checkpoint import load_checkpoint

    return [p.detach().clone() for p in load_checkpoint(path).model.parameters()]


def test_smoke_pipeline_runs_then_skips_completed_stages(smoke_run, tmp_path):
    """data -> pretrain -> sft -> reward -> ppo (Ray actors) -> lpo -> eval, then a rerun skips."""
    from rlhf_ray.pipeline import smoke_overrides
    from rlhf_ray.rewards import ModelReward

    SMOKE = smoke_overrides()

    out, first = smoke_run  # the shared smoke run (tests/test_report.py reads its report)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {"data", "pretrain", "sft", "reward", "ppo", "lpo", "eval"}
    ckpt = {stage: out / stage for stage in ("pretrain", "sft", "reward", "ppo", "lpo")}
    # every training stage: its metrics, finite, with the step counts the smoke config asks for
    for stage, keys in STAGE_KEYS.items():
        m = summary["stages"][stage]
        assert keys <= set(m), (stage, sorted(keys - set(m)))
        assert all(math.isfinite(m[k]) for k in keys), (stage, {k: m[k] for k in keys})
        assert m["checkpoint"] == str(ckpt[stage]) and m["seconds"] > 0
    for stage in ("pretrain", "reward", "lpo"):
        assert summary["stages"][stage]["train/steps"] == SMOKE[stage]["train"]["max_steps"]
    assert summary["stages"]["sft"]["train/steps"] >= 1
    assert summary["stages"]["ppo"]["iterations"] == SMOKE["ppo"]["iterations"]
    assert summary["stages"]["ppo"]["policy/steps"] > 0 and summary["stages"]["ppo"]["critic/steps"] > 0
    # the checkpoints load, chain parent to child by id, and were all made from this data
    fingerprint = json.loads((out / "data" / "stats.json").read_text())["fingerprint"]
    man = {stage: verify_checkpoint(path) for stage, path in ckpt.items()}
    assert all(m["stage"] == stage and m["data_fingerprint"] == fingerprint for stage, m in man.items())
    parents = {"sft": "pretrain", "reward": "sft", "ppo": "sft", "lpo": "ppo"}  # default order: ppo then lpo
    for child, parent in parents.items():
        assert man[child]["parent"] == {"id": man[parent]["id"], "stage": parent}, child
    assert ModelReward.from_checkpoint(ckpt["reward"]).manifest["id"] == man["reward"]["id"]
    # each training stage moved the weights it started from
    for child, parent in (("sft", "pretrain"), ("ppo", "sft"), ("lpo", "ppo")):
        a, b = _weights(ckpt[child]), _weights(ckpt[parent])
        assert len(a) == len(b) and any(not torch.equal(x, y) for x, y in zip(a, b)), child
    # the eval table is each policy's own test predictions, averaged over its users
    table = summary["stages"]["eval"]
    for stage in ("sft", "ppo", "lpo"):
        preds = pd.read_parquet(out / f"predictions-{stage}.parquet")
        assert table[stage]["checkpoint"] == str(ckpt[stage])
        assert table[stage]["users"] == len(preds) == preds["user_idx"].nunique() > 0
        for k in ("ndcg@10", "recall@20"):
            assert table[stage][k] == pytest.approx(float(preds[k].mean()), abs=1e-9), (stage, k)
    # the alignment targets, checked on those same predictions: printed and in the summary
    rows = {r["target"]: r for r in summary["targets"]}
    assert "[pipeline] alignment targets against sft" in first.stdout
    assert set(rows) == {"ppo page_ndcg@10 >= 1.00x sft", "ppo recall@20 >= 1.00x sft", "ppo page_ild@10 >= 1.05x sft",
                         "lpo tail_recall@20 >= 1.50x sft", "lpo ndcg@10 >= 0.99x sft",
                         "ppo: one of its gains beyond the interval", "ppo: hacking monitor silent"}
    sft = pd.read_parquet(out / "predictions-sft.parquet").set_index("user_idx")
    for r in summary["targets"]:
        assert r["target"] in first.stdout
        if r["metric"] in sft and r["ratio"] is not None:
            mine = pd.read_parquet(out / f"predictions-{r['stage']}.parquet").set_index("user_idx")[r["metric"]]
            both = mine.notna() & sft[r["metric"]].notna()
            assert r["ratio"] == pytest.approx(mine[both].mean() / sft[r["metric"]][both].mean())
            assert r["met"] == (r["ratio"] >= r["need"]) and r["users"] == int(both.sum())
    assert rows["ppo: hacking monitor silent"]["met"] == (man["ppo"]["metrics"]["hacking_alerts"] == 0)
    # PPO is a stage like the others: checkpoint at its out, its reward checkpoint recorded as an
    # input, logs (metrics.jsonl, TensorBoard) beside it
    assert man["ppo"]["inputs"]["reward"] == {"id": man["reward"]["id"], "stage": "reward"}
    for stage in ckpt:
        assert (out / f"{stage}.logs" / "metrics.jsonl").stat().st_size > 0, stage
    assert list((out / "ppo.logs" / "tb").glob("events.out.tfevents.*"))
    rerun = tmp_path / "run"  # a copy: the shared run stays as the first call left it
    shutil.copytree(out, rerun)
    second = run(["pipeline", "--smoke", "--out", str(rerun), "--stages", "pretrain,sft"])
    assert second.returncode == 0, second.stderr[-2000:]
    assert "pretrain: complete checkpoint" in second.stdout and "sft: complete checkpoint" in second.stdout
    assert verify_checkpoint(rerun / "sft")["id"] == man["sft"]["id"]  # skipped: not retrained
    assert f"[pipeline] report: {rerun / 'report' / 'report.html'}" in second.stdout  # a partial call too


@pytest.mark.parametrize("flag,value,needle", [
    ("--train.lr", "-1", "lr"),
    ("--train.zero-stage", "5", "zero_stage"),
    ("--page-size", "ten", "page_size"),
])
def test_bad_config_values_exit_2_naming_the_field(synth_data, tmp_path, flag, value, needle):
    res = run(["sft", "--data", str(synth_data), "--out", str(tmp_path / "x"), flag, value])
    assert res.returncode == 2
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x").exists()


def test_bad_config_file_exits_2(synth_data, tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("train:\n  epochz: 3\n")
    res = run(["sft", "--data", str(synth_data), "--out", str(tmp_path / "x"), "--config", str(cfg)])
    assert res.returncode == 2
    assert "epochz" in res.stderr and str(cfg) in res.stderr


def test_missing_data_dir_exits_2(tmp_path):
    res = run(["sft", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert res.returncode == 2 and "nope" in res.stderr


@pytest.mark.parametrize("cmd", ["data", "pretrain", "sft", "reward", "ppo", "lpo", "eval", "serve", "pipeline",
                                 "report"])
def test_every_command_help_prints(cmd, capsys):
    """`rlhf-ray CMD --help` formats every field's help (a bare '%' in one, '95% interval', crashed
    argparse's formatting of `ppo --help`)."""
    from rlhf_ray.cli import main

    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage:" in out
    if cmd == "ppo":
        assert "paired 95%" in out and "--select" in out and "--hack-stop" in out


def test_help_lists_every_stage():
    res = run(["--help"])
    assert res.returncode == 0
    for cmd in ("data", "pretrain", "sft", "reward", "ppo", "lpo", "eval", "serve", "pipeline", "report"):
        assert cmd in res.stdout
