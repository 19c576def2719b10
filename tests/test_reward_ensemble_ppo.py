"""PPO with an ensemble of reward models, through the real CLI on real Ray actors: a second reward
model trained on the smoke run's own pair set with another seed is listed in ``ppo.reward.members``;
the run scores with both (less the uncertainty penalty, clipped), records both checkpoints in its
manifest, and bad member settings fail before any actor starts, naming what is wrong."""
import json

import pytest
import yaml

from tests.conftest import run_cli


def _stage_config(run, stage: str, path, **changes) -> str:
    """The smoke run's ``stage`` config (from its manifest), with ``changes`` merged in, as a YAML file."""
    from rlhf_ray.config import deep_merge

    cfg = json.loads((run / stage / "manifest.json").read_text())["config"]
    path.write_text(yaml.safe_dump(deep_merge(cfg, changes)))
    return str(path)


@pytest.fixture(scope="module")
def member(smoke_run, tmp_path_factory):
    """A second reward model: the smoke run's pairs, another training seed, a few steps, on a Ray Train worker
    (which Ray starts in a directory of its own) with the pair file named relative to where the CLI runs."""
    run, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    tmp = tmp_path_factory.mktemp("member")
    cfg = _stage_config(run, "reward", tmp / "reward.yaml", train={"seed": 7, "max_steps": 4, "num_workers": 1})
    out = tmp / "reward_m1"
    p = run_cli(["reward", "--config", cfg, "--sft", str(run / "sft"), "--data", str(run / "data"),
                 "--out", str(out), "--pairs-file", "reward.pairs.parquet"], cwd=run)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["pairs_file"] == "reward.pairs.parquet" and m["config"]["train"]["num_workers"] == 1
    return out


def _ppo(run, tmp_path, *flags):
    cfg = _stage_config(run, "ppo", tmp_path / "ppo.yaml", iterations=1, eval_every=0, save_every=0)
    return run_cli(["ppo", "--config", cfg, "--sft", str(run / "sft"), "--reward", str(run / "reward"),
                    "--data", str(run / "data"), "--out", str(tmp_path / "ppo"), *flags])


def test_ppo_trains_on_the_ensemble_and_records_every_member(smoke_run, member, tmp_path):
    run, _ = smoke_run
    p = _ppo(run, tmp_path, "--reward.members", str(member), "--reward.uncertainty-coef", "1.0",
             "--reward.clip", "2.0")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "reward EnsembleReward" in p.stdout + p.stderr  # the reward actor built the ensemble
    m = json.loads((tmp_path / "ppo" / "manifest.json").read_text())
    ids = {k: v["id"] for k, v in m["inputs"].items()}
    assert ids["reward"] == json.loads((run / "reward" / "manifest.json").read_text())["id"]
    assert ids["reward_member1"] == json.loads((member / "manifest.json").read_text())["id"]
    assert m["config"]["reward"]["members"] == [str(member)]
    assert m["config"]["reward"]["uncertainty_coef"] == 1.0 and m["config"]["reward"]["clip"] == 2.0
    assert m["metrics"]["iterations"] == 1


def test_bad_member_settings_fail_before_training(smoke_run, tmp_path):
    run, _ = smoke_run
    missing = tmp_path / "no-such-reward"
    p = _ppo(run, tmp_path, "--reward.members", str(missing))
    assert p.returncode != 0 and str(missing) in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "ppo").exists()
    p = _ppo(run, tmp_path, "--reward.uncertainty-coef", "1.0")
    assert p.returncode != 0 and "uncertainty_coef" in p.stderr and "reward.members" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "ppo").exists()
    p = _ppo(run, tmp_path, "--reward.members", str(run / "sft"))  # a checkpoint, but not a reward model
    assert p.returncode != 0 and f"{run / 'sft'}: a 'sft' checkpoint, not a reward model" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "ppo").exists()
