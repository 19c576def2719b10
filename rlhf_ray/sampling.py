"""Negative samplers for listwise preference optimisation (LPO4Rec, arXiv 2507.02255).

Every sampler returns item indices ``idx`` of shape (B, n), int64, distinct
within a row, drawn without replacement from the *allowed* items of that row:

    allowed[b, v] = candidate_mask[v] and not exclude[b, v]

``exclude`` (B, V) bool marks the row's positive and the items the user has
already seen; ``candidate_mask`` (V,) bool restricts the pool (e.g. tail items
only, see :func:`candidate_mask`). A row with fewer than n allowed items raises
ValueError naming the row. All samplers take an optional ``torch.Generator``
(on the tensors' device) so draws are reproducible.

Sampling without replacement uses the Gumbel-top-k trick (Kool et al. 2019):
the top-n of log w_v + g_v, g ~ Gumbel(0, 1), is a draw of n items without
replacement with probabilities proportional to w.

Imports torch only.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

POOLS = ("all", "head", "tail")


def candidate_mask(is_tail: Tensor, pool: str) -> Tensor:
    """Item pool for negatives, (V,) bool: "all" items, "head" (~is_tail) or "tail"."""
    if pool == "all":
        return torch.ones_like(is_tail, dtype=torch.bool)
    if pool == "head":
        return ~is_tail.bool()
    if pool == "tail":
        return is_tail.bool()
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


# --------------------------------------------------------------------------- helpers


def _gumbel(shape: torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gumbel(0, 1) noise g = -log(-log U), U ~ Uniform(0, 1), in ``like``'s dtype/device."""
    u = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    u = u.clamp_min(torch.finfo(like.dtype).tiny)  # log(0) guard
    return -torch.log(-torch.log(u))


def _allowed(
    batch: int,
    num_items: int,
    candidate_mask: Tensor | None,
    exclude: Tensor | None,
    device: torch.device,
) -> Tensor:
    """allowed[b, v] = candidate_mask[v] & ~exclude[b, v], shape (B, V) bool."""
    allowed = torch.ones(batch, num_items, dtype=torch.bool, device=device)
    if candidate_mask is not None:
        if candidate_mask.shape != (num_items,):
            raise ValueError(f"candidate_mask must have shape ({num_items},), got {tuple(candidate_mask.shape)}")
        allowed &= candidate_mask.bool().to(device).unsqueeze(0)
    if exclude is not None:
        if exclude.shape != (batch, num_items):
            raise ValueError(f"exclude must have shape ({batch}, {num_items}), got {tuple(exclude.shape)}")
        allowed &= ~exclude.bool().to(device)
    return allowed


def _check_enough(allowed: Tensor, n: int) -> None:
    counts = allowed.sum(dim=1)  # (B,)
    short = (counts < n).nonzero().flatten()
    if short.numel():
        row = int(short[0])
        raise ValueError(
            f"row {row} has only {int(counts[row])} allowed candidate items, need n={n} negatives "
            f"({short.numel()} row(s) short); widen the candidate pool or lower n"
        )


def _top_n(keys: Tensor, allowed: Tensor, n: int) -> Tensor:
    """Indices of the n largest keys among allowed entries, (B, n) int64."""
    _check_enough(allowed, n)
    keys = keys.masked_fill(~allowed, float("-inf"))
    return keys.topk(n, dim=1).indices


# --------------------------------------------------------------------------- samplers


@torch.no_grad()
def gumbel_topk_negatives(
    scores: Tensor,
    n: int,
    tau: float,
    candidate_mask: Tensor | None = None,
    exclude: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Score-aware negatives: n items per row without replacement, p ~ softmax(scores / tau).

    keys = scores / tau + g,  g ~ Gumbel(0, 1);  idx = top-n(keys) over allowed items.
    Low tau concentrates on the highest-scoring items (hard negatives); high tau
    approaches uniform. scores (B, V) float; returns (B, n) int64.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    batch, num_items = scores.shape
    allowed = _allowed(batch, num_items, candidate_mask, exclude, scores.device)
    scores = scores.detach().to(torch.promote_types(scores.dtype, torch.float32))
    keys = scores / tau + _gumbel(scores.shape, scores, generator)  # (B, V)
    return _top_n(keys, allowed, n)


def gumbel_softmax_weights(
    scores: Tensor,
    tau: float,
    mask: Tensor | None = None,
    hard: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Straight-through Gumbel-Softmax over allowed items (Jang et al. 2017, eq. 1), (B, V).

    y_soft = softmax((scores + g) / tau) over allowed items, g ~ Gumbel(0, 1)
    hard:  y = onehot(argmax y_soft) - sg(y_soft) + y_soft
    Forward is a one-hot sample distributed as softmax(scores) over the allowed
    items (tau sets only how soft the relaxation is; pass scores / T to sample
    from softmax(scores / T)); backward goes through y_soft so gradients reach
    the scorer. ``mask`` (V,) or (B, V) bool marks allowed items.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    batch, num_items = scores.shape
    if mask is None:
        mask = torch.ones(num_items, dtype=torch.bool, device=scores.device)
    allowed = mask.bool().to(scores.device).expand(batch, num_items)  # (B, V)
    _check_enough(allowed, 1)
    noise = _gumbel(scores.shape, scores.detach(), generator)
    logits = ((scores + noise) / tau).masked_fill(~allowed, float("-inf"))  # (B, V)
    y_soft = torch.softmax(logits, dim=1)
    if not hard:
        return y_soft
    index = y_soft.argmax(dim=1, keepdim=True)  # (B, 1)
    y_hard = torch.zeros_like(y_soft).scatter_(1, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


@torch.no_grad()
def uniform_negatives(
    exclude: Tensor,
    n: int,
    candidate_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """n items per row uniformly without replacement from the allowed items, (B, n).

    ``exclude`` (B, V) bool gives both the batch size and the item count.
    """
    batch, num_items = exclude.shape
    allowed = _allowed(batch, num_items, candidate_mask, exclude, exclude.device)
    keys = torch.rand(batch, num_items, generator=generator, device=exclude.device)  # (B, V)
    return _top_n(keys, allowed, n)


@torch.no_grad()
def popularity_negatives(
    popularity: Tensor,
    exclude: Tensor,
    n: int,
    candidate_mask: Tensor | None = None,
    power: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """n items per row without replacement with p_v ~ popularity_v ** power, (B, n).

    keys = power * log(popularity) + g, g ~ Gumbel(0, 1). power = 0 is uniform;
    items of zero popularity are drawn only when nothing else is left.
    """
    batch, num_items = exclude.shape
    if popularity.shape != (num_items,):
        raise ValueError(f"popularity must have shape ({num_items},), got {tuple(popularity.shape)}")
    if (popularity < 0).any():
        raise ValueError("popularity must be non-negative")
    allowed = _allowed(batch, num_items, candidate_mask, exclude, exclude.device)
    pop = popularity.to(device=exclude.device, dtype=torch.float64)
    log_weight = power * torch.log(pop.clamp_min(1e-300))  # (V,)
    keys = log_weight.unsqueeze(0) + _gumbel(torch.Size((batch, num_items)), pop, generator)
    return _top_n(keys, allowed, n)


@torch.no_grad()
def in_batch_negatives(
    pos: Tensor,
    n: int,
    exclude: Tensor | None = None,
    num_items: int | None = None,
    candidate_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Other examples' positives as negatives, topped up uniformly, (B, n).

    Row b draws (in random order) from {pos_j : j != b} minus its own positive,
    its excluded items and items outside ``candidate_mask``; when fewer than n
    such items exist the rest is filled uniformly from the remaining allowed items.
    Its own positive pos_b is always excluded. Give ``exclude`` (B, V) or ``num_items``.
    """
    batch = pos.shape[0]
    if exclude is not None:
        num_items = exclude.shape[1]
    if num_items is None:
        raise ValueError("in_batch_negatives needs exclude (B, V) or num_items")
    allowed = _allowed(batch, num_items, candidate_mask, exclude, pos.device)
    rows = torch.arange(batch, device=pos.device)
    allowed[rows, pos] = False  # never the row's own positive
    in_batch = torch.zeros(batch, num_items, dtype=torch.bool, device=pos.device)
    in_batch[:, pos] = True  # every positive in the batch, for every row (B, V)
    # in-batch items get keys in [1, 2), the uniform top-up in [0, 1): top-n takes
    # in-batch items first, each group in random order.
    keys = torch.rand(batch, num_items, generator=generator, device=pos.device) + in_batch.float()
    return _top_n(keys, allowed, n)


# --------------------------------------------------------------------------- sampled softmax


@torch.no_grad()
def shared_negatives(
    n: int,
    num_items: int,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """n items drawn *with* replacement for a whole batch (sampled softmax), and their
    log-Q correction: ``(items (n,) int64, log(n q_items) (n,) float32)``.

    q is uniform (``weights`` None) or proportional to ``weights`` (V,) (e.g. training
    popularity + 1; every item needs q > 0 for the estimate of the partition function to be
    unbiased, see :func:`rlhf_ray.losses.sampled_item_nll`). log(n q_j) is the log of the
    expected number of times item j is drawn.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if weights is None:
        items = torch.randint(num_items, (n,), generator=generator)
        return items, torch.full((n,), math.log(n / num_items), dtype=torch.float32)
    if weights.shape != (num_items,):
        raise ValueError(f"weights must have shape ({num_items},), got {tuple(weights.shape)}")
    if not bool((weights > 0).all()):
        raise ValueError("weights must be > 0 for every item (add 1 to popularity counts)")
    q = weights.double() / weights.double().sum()
    items = torch.multinomial(q, n, replacement=True, generator=generator)
    return items, torch.log(n * q[items]).float()
