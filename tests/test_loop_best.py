"""Early stopping restores the weights of the best validation, not the last epoch's.

The loop keeps the best epoch's state while training goes on. A state dict of fp32 CPU
parameters holds views of the live tensors (and under DeepSpeed, views of one flat buffer),
so unless the snapshot is a copy, the steps after the best epoch overwrite it and the export
receives the last epoch's weights under the best epoch's metrics.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rlhf_ray.config import TrainConfig
from rlhf_ray.stages.loop import StageSpec, fit


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, batch):
        x, y = batch
        return (self.lin(x).squeeze(-1) - y).pow(2).mean(), {}


def _spec(curve: list[float], seen: list[dict], exported: list[dict]) -> StageSpec:
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randn(8, generator=g)) for _ in range(3)]

    def validate(module):
        seen.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        return {"val/loss": curve[len(seen) - 1]}

    def export(state, metrics):
        exported.append({"state": {k: v.clone() for k, v in state.items()}, "metrics": dict(metrics)})
        return None

    return StageSpec(name="tiny", module=Tiny(), batches=lambda epoch, rank, world: data,
                     steps_per_epoch=lambda world: len(data), validate=validate, export=export)


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_early_stopping_exports_the_best_epochs_weights(tmp_path, zero_stage):
    curve = [1.0, 0.5, 0.9, 0.8, 0.7]  # best at the second validation; patience 3 stops after the 5th
    seen: list[dict] = []
    exported: list[dict] = []
    cfg = TrainConfig(epochs=10, batch_size=8, lr=0.05, warmup_ratio=0.0, patience=3, tensorboard=False,
                      progress=False, zero_stage=zero_stage)
    final = fit(_spec(curve, seen, exported), cfg, tmp_path)
    assert final["train/stopped_by"] == "early_stopping"
    assert final["train/best_epoch"] == 2 and final["train/epochs_run"] == 5
    assert final["val/loss"] == 0.5
    (out,) = exported
    best, last = seen[1], seen[-1]
    assert any(not torch.equal(best[k], last[k]) for k in best)  # training moved the weights after the best
    for k, v in out["state"].items():
        assert torch.equal(v, best[k].float()), f"{k}: the export is not the best epoch's weights"


def test_epochs_between_validations_keep_the_best_so_far(tmp_path):
    """eval_every 2: the unvalidated epochs 1 and 3 neither drop the best state nor stand in for
    it; epoch 4 validates worse than epoch 2, so epoch 2's weights and metrics are exported."""
    seen: list[dict] = []
    exported: list[dict] = []
    cfg = TrainConfig(epochs=4, eval_every=2, batch_size=8, lr=0.05, warmup_ratio=0.0, patience=0,
                      tensorboard=False, progress=False)
    final = fit(_spec([0.5, 0.9], seen, exported), cfg, tmp_path)
    assert len(seen) == 2 and final["val/loss"] == 0.5 and final["train/best_epoch"] == 2
    (out,) = exported
    assert out["metrics"]["val/loss"] == 0.5
    for k, v in out["state"].items():
        assert torch.equal(v, seen[0][k].float()), f"{k}: the export is not epoch 2's weights"


class Recording(Tiny):
    def __init__(self, losses: list[float]):
        super().__init__()
        self.losses = losses

    def forward(self, batch):
        loss, stats = super().forward(batch)
        self.losses.append(float(loss.detach()))
        return loss, stats


def test_an_average_is_validated_and_exported_while_training_continues_on_its_own_weights(tmp_path):
    """train.ema_decay: every validation sees the average and the export is the best one's, yet
    each step trains the model's own weights, so the step losses equal a run without it."""
    runs = {}
    for decay in (0.0, 0.5):
        seen: list[dict] = []
        exported: list[dict] = []
        losses: list[float] = []
        spec = _spec([1.0, 0.5, 0.9], seen, exported)
        torch.manual_seed(0)
        spec.module = Recording(losses)
        cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, warmup_ratio=0.0, patience=0, tensorboard=False,
                          progress=False, seed=0, ema_decay=decay)
        fit(spec, cfg, tmp_path / str(decay))
        runs[decay] = (seen, exported, losses)
    (plain_seen, _, plain_losses), (avg_seen, (avg_out,), avg_losses) = runs[0.0], runs[0.5]
    assert len(avg_losses) == 9 and avg_losses == plain_losses  # the swap put the trained weights back
    for e in range(3):
        assert any(not torch.equal(avg_seen[e][k], plain_seen[e][k]) for k in plain_seen[e])  # it saw the average
    for k, v in avg_out["state"].items():
        assert torch.equal(v, avg_seen[1][k].float()), f"{k}: the export is not the best validation's average"
