"""The real CLI in a subprocess: the smoke pipeline end to end, resume-by-skip, and bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_ray.checkpoint import verify_checkpoint

CLI = [sys.executable, "-m", "rlhf_ray.cli"]


def run(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=600, env=env, **kw)


def test_smoke_pipeline_runs_then_skips_completed_stages(tmp_path):
    """data -> pretrain -> sft -> reward -> ppo (Ray actors) -> lpo -> eval, then a rerun skips."""
    out = tmp_path / "run"
    first = run(["pipeline", "--smoke", "--out", str(out)])
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {"data", "pretrain", "sft", "reward", "ppo", "lpo", "eval"}
    table = summary["stages"]["eval"]
    for stage in ("sft", "ppo", "lpo"):
        assert 0.0 <= table[stage]["ndcg@10"] <= 1.0 and table[stage]["users"] > 0
        assert (out / f"predictions-{stage}.parquet").is_file()
    assert verify_checkpoint(out / "sft")["parent"]["stage"] == "pretrain"
    assert verify_checkpoint(out / "reward")["stage"] == "reward"
    assert verify_checkpoint(out / "ppo" / "policy")["stage"] == "ppo"
    assert verify_checkpoint(out / "lpo")["parent"]["stage"] == "ppo"  # default order: ppo then lpo
    second = run(["pipeline", "--smoke", "--out", str(out), "--stages", "pretrain,sft"])
    assert second.returncode == 0, second.stderr[-2000:]
    assert "pretrain: complete checkpoint" in second.stdout and "sft: complete checkpoint" in second.stdout


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


def test_help_lists_every_stage():
    res = run(["--help"])
    assert res.returncode == 0
    for cmd in ("data", "pretrain", "sft", "reward", "ppo", "lpo", "eval", "serve", "pipeline"):
        assert cmd in res.stdout
