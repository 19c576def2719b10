"""Pre-training's rating validation reports the predictors the head must beat."""
import numpy as np
import pytest

from tests.conftest import TINY_MODEL
from rlhf_ray.config import PretrainConfig
from rlhf_ray.stages import pretrain
from rlhf_ray.stages.common import open_data


def test_rating_baselines_by_hand(synth_data):
    prepared = open_data(synth_data)
    s = prepared.sequences
    train = [(int(i), float(r)) for it, rs, vs in zip(s["items"], s["ratings"], s["valid_start"])
             for i, r in zip(it[:vs], rs[:vs])]
    valid = [(int(i), float(r)) for it, rs, vs, ts in zip(s["items"], s["ratings"], s["valid_start"], s["test_start"])
             for i, r in zip(it[vs:ts], rs[vs:ts])]
    mu = np.mean([r for _, r in train])
    by_item = {}
    for i, r in train:
        by_item.setdefault(i, []).append(r)
    item_pred = [(sum(by_item.get(i, [])) + 5 * mu) / (len(by_item.get(i, [])) + 5) for i, _ in valid]
    truth = np.array([r for _, r in valid])
    got = pretrain.rating_baselines(prepared)
    assert got["val/rating_rmse_global_mean"] == pytest.approx(np.sqrt(np.mean((mu - truth) ** 2)))
    assert got["val/rating_rmse_item_mean"] == pytest.approx(np.sqrt(np.mean((np.array(item_pred) - truth) ** 2)))


def test_pretrain_validation_carries_the_baselines(synth_data, tmp_path):
    cfg = PretrainConfig.from_dict({"model": TINY_MODEL, "train": {"epochs": 1, "max_steps": 3, "batch_size": 16,
                                                                  "progress": False, "tensorboard": False}})
    metrics = pretrain.run(cfg, str(synth_data), str(tmp_path / "pt"))
    assert metrics["val/rating_rmse"] > 0
    assert metrics["val/rating_rmse_global_mean"] > 0 and metrics["val/rating_rmse_item_mean"] > 0


def test_two_runs_of_one_config_write_the_same_weights(synth_data, tmp_path):
    """A fresh model and its rating head are drawn from train.seed, not from whatever the process's
    torch RNG held (two pipeline runs of one config used to pre-train different models)."""
    import torch
    from safetensors.torch import load_file

    cfg = PretrainConfig.from_dict({"model": TINY_MODEL, "train": {"epochs": 1, "max_steps": 3, "batch_size": 16,
                                                                  "progress": False, "tensorboard": False}})
    pretrain.run(cfg, str(synth_data), str(tmp_path / "a"))
    torch.randn(7)  # the process's RNG has moved on, as it would in another process or after another stage
    pretrain.run(cfg, str(synth_data), str(tmp_path / "b"))
    for f in ("model.safetensors", "heads.safetensors"):
        a, b = load_file(str(tmp_path / "a" / f)), load_file(str(tmp_path / "b" / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    other = PretrainConfig.from_dict({**cfg.to_dict(), "train": {**cfg.train.to_dict(), "seed": 1}})
    pretrain.run(other, str(synth_data), str(tmp_path / "c"))
    a, c = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("a", "c"))
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed is what decides
