"""Exclusion, pool, concentration and gradient checks for rlhf_ray.sampling."""
from __future__ import annotations

import pytest
import torch

from rlhf_ray import sampling as S


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_valid(idx: torch.Tensor, n: int, allowed: torch.Tensor) -> None:
    assert idx.dtype == torch.int64 and idx.shape == (allowed.shape[0], n)
    assert allowed.gather(1, idx).all(), "sampled an excluded / out-of-pool item"
    assert all(len(set(row.tolist())) == n for row in idx), "duplicate negatives in a row"


def test_candidate_mask_pools():
    is_tail = torch.tensor([True, False, True, False])
    assert S.candidate_mask(is_tail, "all").tolist() == [True] * 4
    assert S.candidate_mask(is_tail, "head").tolist() == [False, True, False, True]
    assert S.candidate_mask(is_tail, "tail").tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="pool"):
        S.candidate_mask(is_tail, "torso")


def test_gumbel_topk_never_excluded_and_respects_pool():
    B, V, n = 8, 30, 4
    pool = S.candidate_mask(torch.arange(V) % 3 == 0, "tail")  # 10 tail items
    for seed in range(50):
        g = gen(seed)
        scores = torch.randn(B, V, generator=g) * 5
        exclude = torch.rand(B, V, generator=g) < 0.4
        exclude[:, [0, 3, 9, 12]] = False  # at least n tail items stay allowed per row
        idx = S.gumbel_topk_negatives(scores, n, tau=0.5, candidate_mask=pool, exclude=exclude, generator=g)
        assert_valid(idx, n, pool[None] & ~exclude)


def test_gumbel_topk_too_few_candidates_names_row():
    exclude = torch.zeros(3, 5, dtype=torch.bool)
    exclude[1, :3] = True  # row 1 keeps 2 items
    with pytest.raises(ValueError, match="row 1"):
        S.gumbel_topk_negatives(torch.zeros(3, 5), 3, 1.0, exclude=exclude)


def test_gumbel_topk_lower_tau_concentrates_on_top_items():
    V, n, draws = 40, 5, 400
    scores = torch.linspace(4.0, 0.0, V).expand(draws, V)  # item 0 best
    exclude = torch.zeros(draws, V, dtype=torch.bool)
    exclude[:, 1] = True  # the 2nd best is excluded: true top-n is {0, 2, 3, 4, 5}
    top = torch.tensor([0, 2, 3, 4, 5])

    def overlap(tau: float) -> float:
        idx = S.gumbel_topk_negatives(scores, n, tau, exclude=exclude, generator=gen(1))
        return torch.isin(idx, top).float().mean().item()

    cold, hot = overlap(0.05), overlap(20.0)
    assert cold > 0.95, cold
    assert hot < 0.3, hot  # near uniform: 5 / 39 = 0.13
    assert cold > hot


def test_gumbel_topk_reproducible_with_generator():
    scores = torch.randn(4, 20, generator=gen(3))
    a = S.gumbel_topk_negatives(scores, 5, 1.0, generator=gen(7))
    b = S.gumbel_topk_negatives(scores, 5, 1.0, generator=gen(7))
    c = S.gumbel_topk_negatives(scores, 5, 1.0, generator=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gumbel_softmax_straight_through():
    V = 6
    mask = torch.tensor([True, True, False, True, False, True])
    scores = torch.randn(5, V, generator=gen(0), requires_grad=True)
    y = S.gumbel_softmax_weights(scores, tau=0.5, mask=mask, hard=True, generator=gen(1))
    assert y.shape == (5, V)
    # forward: exactly one-hot, on an allowed item
    assert torch.allclose(y, y.round(), atol=1e-6) and torch.allclose(y.sum(1), torch.ones(5))
    assert (y.detach()[:, ~mask] == 0).all()
    # backward: flows through the soft probabilities, not to masked items
    target = torch.arange(V, dtype=torch.float)
    (y * target).sum().backward()
    assert scores.grad.abs().sum() > 0
    assert (scores.grad[:, ~mask] == 0).all()


def test_gumbel_softmax_hard_sample_follows_softmax():
    probs = torch.tensor([0.6, 0.3, 0.1])
    scores = probs.log().expand(6000, 3)
    y = S.gumbel_softmax_weights(scores, tau=0.3, hard=True, generator=gen(2))
    freq = y.detach().mean(0)
    assert torch.allclose(freq, probs, atol=0.03), freq


def test_uniform_negatives_exclusion_and_spread():
    B, V, n = 2000, 10, 2
    exclude = torch.zeros(B, V, dtype=torch.bool)
    exclude[:, 0] = True
    pool = torch.ones(V, dtype=torch.bool)
    pool[9] = False
    idx = S.uniform_negatives(exclude, n, candidate_mask=pool, generator=gen(0))
    assert_valid(idx, n, pool[None] & ~exclude)
    freq = torch.bincount(idx.flatten(), minlength=V).float() / idx.numel()
    # 8 allowed items (1..8): each ~1/8
    assert torch.allclose(freq[1:9], torch.full((8,), 1 / 8), atol=0.02), freq


def test_popularity_negatives_follow_power():
    B = 6000
    popularity = torch.tensor([1.0, 3.0, 6.0, 50.0])
    exclude = torch.zeros(B, 4, dtype=torch.bool)
    exclude[:, 3] = True  # the most popular item is excluded: p = [0.1, 0.3, 0.6]
    idx = S.popularity_negatives(popularity, exclude, 1, generator=gen(0))
    assert (idx != 3).all()
    freq = torch.bincount(idx.flatten(), minlength=4).float()[:3] / B
    assert torch.allclose(freq, torch.tensor([0.1, 0.3, 0.6]), atol=0.03), freq
    # power 0 -> uniform over the 3 allowed items
    idx0 = S.popularity_negatives(popularity, exclude, 1, power=0.0, generator=gen(1))
    freq0 = torch.bincount(idx0.flatten(), minlength=4).float()[:3] / B
    assert torch.allclose(freq0, torch.full((3,), 1 / 3), atol=0.03), freq0


def test_in_batch_negatives_excludes_own_positive_and_fills():
    pos = torch.tensor([0, 1, 2, 2])
    exclude = torch.zeros(4, 10, dtype=torch.bool)
    exclude[1, 0] = True  # row 1 has seen item 0: its only in-batch candidate is 2
    for seed in range(30):
        idx = S.in_batch_negatives(pos, 3, exclude=exclude, generator=gen(seed))
        own = idx == pos[:, None]
        assert not own.any()
        assert not exclude.gather(1, idx).any()
        assert all(len(set(r.tolist())) == 3 for r in idx)
        # in-batch items come first; the rest is a uniform top-up
        assert set(idx[0, :2].tolist()) == {1, 2}
        assert idx[1, 0].item() == 2 and idx[1, 1].item() not in (0, 1, 2)
        assert set(idx[2, :2].tolist()) == {0, 1} and set(idx[3, :2].tolist()) == {0, 1}


def test_in_batch_negatives_needs_item_count():
    with pytest.raises(ValueError):
        S.in_batch_negatives(torch.tensor([0, 1]), 1)
    idx = S.in_batch_negatives(torch.tensor([0, 1]), 1, num_items=2)
    assert idx.tolist() == [[1], [0]]
