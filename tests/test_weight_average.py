"""train.ema_decay: a moving average of the weights is validated and exported in place of the
trained ones (rlhf_ray.stages.averaging); sft.label_smoothing smooths the next-item loss."""
import json

import pytest
import torch
from torch import nn

from rlhf_ray.config import ConfigError, SFTConfig, TrainConfig
from rlhf_ray.losses import token_nll
from rlhf_ray.stages.averaging import WeightAverage


def test_average_follows_the_formula_and_swaps_back():
    m = nn.Linear(3, 2)
    first = {n: p.detach().clone() for n, p in m.named_parameters()}
    avg = WeightAverage(m, decay=0.9)
    expect = {n: p.clone() for n, p in first.items()}
    for k in range(20):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1.0)
        avg.update(m)
        d = min(0.9, (1 + k) / (10 + k))
        for n, p in m.named_parameters():
            expect[n] = d * expect[n] + (1 - d) * p.detach()
    trained = {n: p.detach().clone() for n, p in m.named_parameters()}
    with avg.swapped_in(m):
        for n, p in m.named_parameters():
            assert torch.allclose(p, expect[n], atol=1e-5)
            assert not torch.allclose(p, trained[n])  # the average lags the trained weights
    for n, p in m.named_parameters():
        assert torch.equal(p, trained[n])  # the trained weights are back, bit for bit
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(m, decay=1.0)


def test_config_refuses_an_average_of_partitioned_weights_and_smoothing_a_sampled_softmax():
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig.from_dict({"ema_decay": 0.999, "zero_stage": 3})
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig.from_dict({"ema_decay": 1.5})
    with pytest.raises(ConfigError, match="label_smoothing"):
        SFTConfig.from_dict({"label_smoothing": 0.1, "sampled_softmax": 64})
    from rlhf_ray.config import PPOConfig

    for role in ("policy", "critic"):  # PPO's actors do not read it: refused, not ignored
        with pytest.raises(ConfigError, match="ema_decay"):
            PPOConfig.from_dict({role: {"train": {"ema_decay": 0.99}}})
    # configs recorded before the fields existed read as off: old checkpoints still match
    assert TrainConfig().matches({k: v for k, v in TrainConfig().to_dict().items() if k != "ema_decay"})


def test_label_smoothing_mixes_the_nll_with_the_mean_over_classes():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 7), torch.tensor([[1, 2, -100, 0], [6, -100, -100, 3]])
    plain, _ = token_nll(logits, labels)
    smooth, _ = token_nll(logits, labels, 0.2)
    logp = logits.log_softmax(-1)[labels != -100]  # (M, V)
    uniform = (-logp.mean(-1)).mean()
    assert torch.allclose(smooth, 0.8 * plain + 0.2 * uniform, atol=1e-6)
    _, stats = token_nll(logits, labels, 0.2)  # the logged nll stays the plain one
    assert stats["nll"] == pytest.approx(float(plain)) and stats["smoothed"] == pytest.approx(float(smooth))


def test_sft_with_an_average_exports_the_averaged_weights(synth_data, tmp_path):
    """The exported checkpoint holds the average (not the last trained weights) and its
    validation figure is the one measured on it."""
    from conftest import TINY_MODEL

    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.stages import sft

    train = {"epochs": 2, "batch_size": 16, "progress": False, "tensorboard": False, "max_steps": 6,
             "patience": 0, "ema_decay": 0.5}
    cfg = SFTConfig.from_dict({"model": TINY_MODEL, "train": train, "max_history": 20, "page_size": 5,
                               "label_smoothing": 0.1})
    out = tmp_path / "sft"
    metrics = sft.run(cfg, str(synth_data), str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["train"]["ema_decay"] == 0.5 and manifest["config"]["label_smoothing"] == 0.1
    plain = tmp_path / "plain"
    sft.run(SFTConfig.from_dict({**cfg.to_dict(), "train": {**train, "ema_decay": 0.0}}), str(synth_data), str(plain))
    a, b = load_checkpoint(out).model.state_dict(), load_checkpoint(plain).model.state_dict()
    differ = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert differ, "the same seed with and without the average exported the same weights"


def test_sft_loss_weights_refuse_negative_values_by_name():
    for name in ("rank_weight", "next_weight"):
        with pytest.raises(ConfigError, match=name):
            SFTConfig.from_dict({name: -0.25})
    assert SFTConfig.from_dict({"rank_weight": 0.0}).rank_weight == 0.0  # off is an ablation, not an error
