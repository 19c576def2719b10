"""Every registered stage starts, logs and reports alike: PPO exactly as SFT.

Each stage runs inside a Ray Tune function trainable (the Train V2 way: Tune starts the
function, the function launches the stage through the registry). Tune must receive the
stage's per-epoch / per-iteration metrics and, last, its checkpoint; the stage's TensorBoard
events and ``metrics.jsonl`` sit beside the checkpoint in ``<out>.logs``.
"""
import json
from pathlib import Path

import pytest

from test_ppo_common import ppo_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def ray_local():
    from rlhf_ray.rayutil import init_ray

    ray = init_ray(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


def _configs(tiny_sft):
    from tests.conftest import tiny_sft_config

    return {
        "sft": (tiny_sft_config(tensorboard=True), str(tiny_sft), {}),
        "ppo": (ppo_config(iterations=2, eval_every=1, save_every=0), str(tiny_sft), {"reward": "rule"}),
    }


@pytest.mark.parametrize("name", ["sft", "ppo"])
def test_stage_reports_to_tune_and_logs_beside_its_checkpoint(name, ray_local, tiny_sft, synth_data, tmp_path):
    from ray import tune

    from rlhf_ray.checkpoint import verify_checkpoint
    from rlhf_ray.stages import registry

    stage = registry.get(name)
    cfg, init, inputs = _configs(tiny_sft)[name]
    out, data = str(tmp_path / name), str(synth_data)

    def trainable(_config):
        from rlhf_ray.stages.launch import launch

        launch(stage.name, cfg, data, out, init=init, inputs=inputs)

    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 0.1}),
                       run_config=tune.RunConfig(name=name, storage_path=str(tmp_path / "tune")))
    result = tuner.fit()[0]
    assert result.error is None, result.error
    reports = result.metrics_dataframe
    assert len(reports) >= 2  # at least one epoch / iteration, then the final report with the checkpoint
    assert result.checkpoint is not None
    assert verify_checkpoint(result.checkpoint.path)["stage"] == name == verify_checkpoint(out)["stage"]
    logs = Path(out + ".logs")
    records = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert records and any(k.startswith("val/") for r in records for k in r)
    assert list((logs / "tb").glob("events.out.tfevents.*"))
