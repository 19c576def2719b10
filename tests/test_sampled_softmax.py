"""Sampled softmax for SFT: exact when every item is a negative once, an unbiased estimate of the
partition function (so of 1 / p(target)) with popularity or uniform negatives and the log-Q
correction, and the SFT stage trains with it while validation still ranks the full catalogue."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlhf_ray.losses import sampled_item_nll
from rlhf_ray.sampling import shared_negatives
from rlhf_ray.stages.common import init_policy, open_data
from rlhf_ray.stages.sft import (SFTModule, golden_pages, next_item_windows, page_batch, sampler_weights,
                                 training_sequences, window_batch)
from tests.conftest import tiny_sft_config


def test_every_item_once_without_correction_is_the_full_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 50, generator=g) * 3  # (P, n_items)
    target = torch.randint(50, (7,), generator=g)
    items = torch.arange(50)
    keep = items[None, :] != target[:, None]
    nll = sampled_item_nll(logits.gather(1, target[:, None]).squeeze(1), logits, torch.zeros(50), keep)
    torch.testing.assert_close(nll, F.cross_entropy(logits, target, reduction="none"), rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampler", ["popularity", "uniform"])
def test_log_q_corrected_estimate_is_unbiased_for_one_over_p(sampler):
    g = torch.Generator().manual_seed(1)
    n_items, S, draws = 200, 16, 6000
    popularity = torch.arange(n_items, 0, -1).double() ** 1.5  # skewed
    logits = (0.5 * popularity.log() + 0.5 * torch.randn(n_items, generator=g, dtype=torch.float64)).float()
    t = 100  # popular items score higher, as they do in a trained recommender
    p_full = torch.softmax(logits.double(), 0)[t].item()
    weights = None if sampler == "uniform" else popularity
    inv_p, inv_p_raw = [], []
    for _ in range(draws):
        items, corr = shared_negatives(S, n_items, weights, g)
        keep = (items != t)[None, :]
        inv_p.append(sampled_item_nll(logits[t:t + 1], logits[items][None], corr, keep).exp().item())
        if weights is not None:  # the same draws without the log-Q correction
            inv_p_raw.append(sampled_item_nll(logits[t:t + 1], logits[items][None],
                                              torch.full((S,), np.log(S / n_items)), keep).exp().item())
    est = float(np.mean(inv_p))
    assert abs(est * p_full - 1) < 0.05, (est, 1 / p_full)
    if weights is not None:  # popularity draws without correction over-weight popular items: biased
        assert abs(float(np.mean(inv_p_raw)) * p_full - 1) > 0.2


def _batch(prepared, vocab, cfg):
    seqs = training_sequences(prepared)
    windows = next_item_windows(seqs, cfg.max_history, cfg.window_stride)[:12]
    pages = golden_pages(seqs, cfg.page_size, 2, prepared.positive_threshold, random.Random(0))[:6]
    return {"windows": window_batch(windows, vocab), "pages": page_batch(pages, vocab, cfg.max_history)}


@pytest.mark.parametrize("user_tokens", [False, True])
def test_sft_losses_with_all_items_sampled_equal_the_full_losses(synth_data, user_tokens):
    torch.manual_seed(0)
    cfg = tiny_sft_config()
    cfg = cfg.replace(model={**cfg.model.to_dict(), "user_tokens": user_tokens})
    prepared = open_data(synth_data)
    lm, _, vocab, _, _ = init_policy(None, cfg.model, prepared)
    lm.eval()
    batch = _batch(prepared, vocab, cfg)
    assert (batch["windows"]["ids"][:, 1] >= vocab.user_offset).all() == user_tokens  # <bos> <user_u> ...
    full = SFTModule(lm, vocab, cfg)
    sampled = SFTModule(lm, vocab, cfg.replace(sampled_softmax=vocab.n_items))
    _, s_full = full(batch)
    every = {"items": torch.arange(vocab.n_items), "log_correction": torch.zeros(vocab.n_items)}
    loss, s_all = sampled({**batch, "negatives": every})
    assert s_all["l_next"] == pytest.approx(s_full["l_next"], abs=1e-5)
    assert s_all["l_rank"] == pytest.approx(s_full["l_rank"], abs=1e-5)
    loss.backward()  # gradients reach the item rows of the output projection
    assert lm.get_output_embeddings().weight.grad[vocab.item_offset:].abs().sum() > 0

    # a real draw of a few negatives: a different (smaller) estimate, finite
    items, corr = shared_negatives(8, vocab.n_items, sampler_weights(cfg, prepared), torch.Generator().manual_seed(0))
    _, s_few = sampled({**batch, "negatives": {"items": items, "log_correction": corr}})
    assert np.isfinite(s_few["l_next"]) and np.isfinite(s_few["l_rank"])
    assert s_few["l_next"] != pytest.approx(s_full["l_next"], abs=1e-3)


def test_sft_stage_trains_with_sampled_softmax_and_validates_on_the_full_catalogue(synth_data, tmp_path):
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.stages import sft

    cfg = tiny_sft_config(max_steps=4, eval_users=20).replace(sampled_softmax=16, sampled_softmax_sampler="uniform")
    metrics = sft.run(cfg, str(synth_data), str(tmp_path / "sft"))
    assert np.isfinite(metrics["val/ndcg@10"])
    ck = load_checkpoint(tmp_path / "sft")
    assert ck.manifest["config"]["sampled_softmax"] == 16
    assert ck.vocab.n_items == open_data(synth_data).n_items


def test_shared_negatives_rejects_zero_weights():
    with pytest.raises(ValueError, match="> 0"):
        shared_negatives(4, 3, torch.tensor([1.0, 0.0, 2.0]))


def test_sampled_softmax_is_refused_with_zero_3():
    from rlhf_ray.config import ConfigError, SFTConfig

    with pytest.raises(ConfigError, match="sampled_softmax.*ZeRO-3"):
        SFTConfig.from_dict({"sampled_softmax": 64, "train": {"zero_stage": 3}})
