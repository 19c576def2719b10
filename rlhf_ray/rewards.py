"""Page rewards, pluggable: PPO calls any :class:`RewardFn`.

    reward = ModelReward.from_checkpoint("runs/reward")          # trained, mixed-grained
    reward = RuleReward(load_prepared("data/ml-100k"))            # rule-based
    out = reward(histories, pages, user_idx=users)                # pages (B, K) item_idx, -1 = pad
    out.total  # (B,)   out.page  # (B,)   out.items  # (B, K), 0 at padding

**Mixed-grained reward model** (PageLLM). A sequence is the generation prompt
(:func:`rlhf_ray.generation.build_prompts`) followed by the page's item tokens and
``<eos>``; with h(.) the backbone's final hidden state:

    g(page, user) = w_g . h(<eos>) + b_g                  page-level score
    r_t           = w_r . h(item_t) + b_r                 item-level token reward, t = 1..K'
    R             = alpha * g~ + (1 - alpha) * (1/K') sum_t r~_t

K' = the page's items (padding excluded); ``~`` = normalised with the mean/std of
g and of mean_t r_t over the training pairs' pages (saved in the checkpoint
manifest), so alpha mixes commensurate scales: alpha = 1 gives g~ alone, alpha = 0
the mean item reward alone. Reported items are the normalised r~_t.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from rlhf_ray.errors import CheckpointError
from rlhf_ray.generation import Prompts, build_prompts
from rlhf_ray.model import backbone_hidden
from rlhf_ray.tokens import Vocab

HEAD_NAMES = ["page", "item"]


@dataclass
class RewardOutput:
    page: Tensor  # (B,) page-level score
    items: Tensor  # (B, K) item-level token rewards, 0 where the page slot is padding
    total: Tensor  # (B,) the reward PPO optimises


@runtime_checkable
class RewardFn(Protocol):
    """Anything that scores pages: ``(histories, pages (B, K) item_idx with -1 pad) -> RewardOutput``.

    ``histories[b]``: user b's item_idx history, oldest first. ``user_idx`` (B,) is optional;
    rewards that need to know the user (e.g. :class:`RuleReward`'s hits) require it.
    Returns CPU float32 tensors.
    """

    def __call__(self, histories: Sequence[Sequence[int]], pages: Tensor,
                 user_idx: Sequence[int] | None = None) -> RewardOutput: ...


def item_mean(items: Tensor, mask: Tensor) -> Tensor:
    """(B,) mean_t items[b, t] over the slots where ``mask`` (B, K) is set (0 for an empty page)."""
    m = mask.to(items.dtype)
    return (items * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def mix(page: Tensor, items: Tensor, mask: Tensor, alpha: float) -> Tensor:
    """(B,) R = alpha * page + (1 - alpha) * mean_t items."""
    return alpha * page + (1.0 - alpha) * item_mean(items, mask)


def as_pages(pages) -> Tensor:
    """(B, K) int64 item_idx tensor from a tensor / array / list of equal-length lists."""
    t = torch.as_tensor(np.asarray(pages) if not isinstance(pages, Tensor) else pages).long()
    if t.ndim != 2:
        raise ValueError(f"pages: expected a 2-D (B, K) item_idx array (-1 = padding), got shape {tuple(t.shape)}")
    return t


# --------------------------------------------------------------------------- the model


def score_pages(lm: nn.Module, heads: nn.Module, vocab: Vocab, prompts: Prompts,
                pages: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Raw head outputs for ``[prompt | page items | <eos>]``, one forward pass. Differentiable.

    ``prompts``: left-padded (B, L); ``pages``: (B, K) item_idx, -1 = padding (its token is
    masked out, so the ``<eos>`` follows the last real item in position). Returns
    ``page (B,)``, ``items (B, K)`` (0 at padding) and ``mask (B, K)``.
    """
    dev = next(lm.parameters()).device
    ids, am, pages = prompts.input_ids.to(dev), prompts.attention_mask.to(dev), pages.to(dev)
    B, L = ids.shape
    K = pages.shape[1]
    slot = pages >= 0  # (B, K)
    item_ids = torch.where(slot, vocab.item_token(pages.clamp(min=0)), torch.full_like(pages, vocab.pad))
    eos = torch.full((B, 1), vocab.eos, dtype=ids.dtype, device=dev)
    full_ids = torch.cat([ids, item_ids, eos], dim=1)  # (B, L + K + 1)
    full_am = torch.cat([am, slot.long(), torch.ones_like(eos)], dim=1)
    h = backbone_hidden(lm, full_ids, full_am)  # (B, L + K + 1, H), no LM head
    page = heads["page"](h[:, -1]).float()  # (B,) from <eos>
    items = heads["item"](h[:, L: L + K]).float() * slot  # (B, K) from each item token
    return page, items, slot


@dataclass
class RewardNorm:
    """Per-head normalisation: g~ = (g - page_mean) / page_std, r~_t = (r_t - item_mean) / item_std
    (item stats are those of mean_t r_t, so mean_t r~_t = (mean_t r_t - item_mean) / item_std)."""

    page_mean: float = 0.0
    page_std: float = 1.0
    item_mean: float = 0.0
    item_std: float = 1.0

    @classmethod
    def fit(cls, page: Tensor, item_means: Tensor, eps: float = 1e-6) -> "RewardNorm":
        """Statistics of page scores (N,) and per-page mean item rewards (N,)."""
        return cls(float(page.mean()), float(page.std(unbiased=False).clamp(min=eps)),
                   float(item_means.mean()), float(item_means.std(unbiased=False).clamp(min=eps)))

    def to_dict(self) -> dict:
        return {"page": {"mean": self.page_mean, "std": self.page_std},
                "item": {"mean": self.item_mean, "std": self.item_std}}

    @classmethod
    def from_dict(cls, d: dict) -> "RewardNorm":
        return cls(float(d["page"]["mean"]), float(d["page"]["std"]), float(d["item"]["mean"]),
                   float(d["item"]["std"]))

    def apply(self, page: Tensor, items: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return (page - self.page_mean) / self.page_std, ((items - self.item_mean) / self.item_std) * mask


class ModelReward:
    """The trained mixed-grained reward model as a :class:`RewardFn` (inference only).

    ``norm=None`` scores with the raw heads. ``clip > 0`` clamps the normalised page score and
    each item reward to [-clip, clip] before the mix (reward clipping: a page the model scores
    far outside what its training pairs taught it counts no more than ``clip`` standard
    deviations). The backbone and heads are used as given (``from_checkpoint`` puts them in eval
    mode on ``device``).
    """

    def __init__(self, lm: nn.Module, heads: nn.Module, vocab: Vocab, *, alpha: float = 0.5,
                 norm: RewardNorm | None = None, max_history: int = 50, batch_size: int = 256, clip: float = 0.0):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if clip < 0:
            raise ValueError(f"clip must be >= 0 (0 = off), got {clip}")
        self.lm, self.heads, self.vocab = lm, heads, vocab
        self.alpha, self.norm, self.clip = float(alpha), norm or RewardNorm(), float(clip)
        self.max_history, self.batch_size = max_history, batch_size
        self.manifest: dict = {}  # set by from_checkpoint, with the checkpoint's catalogue
        self.catalog = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, alpha: float | None = None, device: str = "cpu",
                        batch_size: int = 256, verify: bool = True, clip: float = 0.0) -> "ModelReward":
        """Load a ``reward`` checkpoint; ``alpha=None`` keeps the trained mix ratio."""
        from rlhf_ray.checkpoint import load_checkpoint, load_heads

        ck = load_checkpoint(path, verify=verify, device=device)
        info = ck.manifest.get("reward")
        if ck.stage != "reward" or not info:
            raise CheckpointError(f"{path}: a {ck.stage!r} checkpoint, not a reward model (rlhf-ray reward)")
        heads = load_heads(ck, HEAD_NAMES).to(device).eval()
        self = cls(ck.model.eval(), heads, ck.vocab, alpha=info["alpha"] if alpha is None else alpha,
                   norm=RewardNorm.from_dict(info["norm"]), max_history=int(info["max_history"]),
                   batch_size=batch_size, clip=clip)
        self.manifest, self.catalog = ck.manifest, ck.catalog
        return self

    @torch.no_grad()
    def __call__(self, histories: Sequence[Sequence[int]], pages, user_idx: Sequence[int] | None = None
                 ) -> RewardOutput:
        pages = as_pages(pages)
        if len(histories) != pages.shape[0]:
            raise ValueError(f"histories: {len(histories)} rows for {pages.shape[0]} pages")
        if pages.numel() and (pages.min() < -1 or pages.max() >= self.vocab.n_items):
            raise ValueError(f"pages: item_idx must be in [0, {self.vocab.n_items}) or -1 (padding), "
                             f"got [{int(pages.min())}, {int(pages.max())}]")
        outs = []
        for s in range(0, len(histories), self.batch_size):
            users = None if user_idx is None else list(user_idx[s: s + self.batch_size])
            prompts = build_prompts(histories[s: s + self.batch_size], self.vocab, self.max_history,
                                    exclude_seen=False, user_idx=users)
            outs.append(score_pages(self.lm, self.heads, self.vocab, prompts, pages[s: s + self.batch_size]))
        page = torch.cat([o[0] for o in outs]).cpu()
        items = torch.cat([o[1] for o in outs]).cpu()
        mask = torch.cat([o[2] for o in outs]).cpu()
        page, items = self.norm.apply(page, items, mask)
        if self.clip:
            page, items = page.clamp(-self.clip, self.clip), items.clamp(-self.clip, self.clip) * mask
        return RewardOutput(page, items, mix(page, items, mask, self.alpha))


class EnsembleReward:
    """Several :class:`ModelReward` members (each normalised with its own statistics, so their
    scales agree), combined per page and per slot:

        page  = mean_m page_m  - uncertainty * std_m page_m
        item_t = mean_m item_mt - uncertainty * std_m item_mt
        total = alpha * page + (1 - alpha) * mean_t item_t

    std over members (population, ddof 0). ``uncertainty = 0`` is the plain mean. Reward models
    trained with different seeds disagree most where the pairs say least; the penalty makes a
    page the members disagree on worth less, so the policy is not paid for moving where the
    reward is a guess. Coste et al. (ICLR 2024, reward-model ensembles against over-optimisation)
    penalise the members' variance; the standard deviation is used here so that ``uncertainty``
    is in the reward's own units (z-scores of the training pages). Members must share the item
    catalogue and mix ratio."""

    def __init__(self, members: Sequence[ModelReward], uncertainty: float = 0.0):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if uncertainty < 0:
            raise ValueError(f"uncertainty must be >= 0, got {uncertainty}")
        if uncertainty and len(members) < 2:
            raise ValueError("an uncertainty penalty needs at least two members (their spread is the penalty)")
        n = {m.vocab.n_items for m in members}
        alphas = {m.alpha for m in members}
        if len(n) > 1 or len(alphas) > 1:
            raise ValueError(f"ensemble members differ: n_items {sorted(n)}, alpha {sorted(alphas)}")
        self.members, self.uncertainty = list(members), float(uncertainty)
        self.alpha, self.vocab = members[0].alpha, members[0].vocab
        self.manifest, self.catalog = members[0].manifest, members[0].catalog
        self.max_history = members[0].max_history

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], **kw) -> "EnsembleReward":
        return cls([ModelReward.from_checkpoint(p, **kw) for p in paths])

    def __call__(self, histories: Sequence[Sequence[int]], pages, user_idx: Sequence[int] | None = None
                 ) -> RewardOutput:
        pages = as_pages(pages)
        outs = [m(histories, pages, user_idx) for m in self.members]

        def combine(xs: list[Tensor]) -> Tensor:
            x = torch.stack(xs)
            return x.mean(0) - self.uncertainty * x.std(0, unbiased=False) if self.uncertainty else x.mean(0)

        mask = pages >= 0
        page, items = combine([o.page for o in outs]), combine([o.items for o in outs]) * mask
        return RewardOutput(page, items, mix(page, items, mask, self.alpha))


# --------------------------------------------------------------------------- rules


class RuleReward:
    """A rule-based :class:`RewardFn` (no model): hits on the user's relevant items, a tail
    bonus, a diversity bonus, a penalty for seen or repeated items.

        seen_t = 1[p_t in H_u or p_t in p_<t]
        r_t    = hit * 1[p_t in T_u and not seen_t] + tail * 1[p_t is a tail item] - repeat * seen_t
        page   = diversity * H_cat(page) / ln(K')      (category entropy, 0 when K' < 2)
        total  = page + sum_t r_t                      (+hit per hit)

    H_u = the given history. T_u, the relevant set, is by default (``split="train"``) the
    user's positives in the *training range* (items before ``valid_start``), never a held-out
    target: PPO validates on the ``valid`` targets and the final figures use ``test``, so a
    reward that paid for either would train on what is measured. A hit therefore needs a
    history that stops inside the training range: the training positives that follow it
    count; with the whole training range as the history (PPO's prompts) every training
    positive is already in H_u and the rule pays only its tail, diversity and repeat terms.
    ``split="valid"`` / ``"test"`` take that split's targets as T_u instead: for offline
    analysis, never for a policy validated or tested on that split. ``user_idx`` is required
    when ``hit`` != 0.
    """

    def __init__(self, prepared, split: str = "train", *, hit: float = 1.0, tail: float = 0.1,
                 diversity: float = 0.5, repeat: float = 1.0):
        if split == "train":
            thr = prepared.positive_threshold
            s = prepared.sequences
            self.targets = {int(u): set(np.asarray(it[:vs])[np.asarray(r[:vs]) > thr].tolist())
                            for u, it, r, vs in zip(s["user_idx"], s["items"], s["ratings"], s["valid_start"])}
        elif split in ("valid", "test"):
            h = prepared.histories(split)
            self.targets = {int(u): set(t) for u, t in zip(h.user_idx, h.targets)}
        else:
            raise ValueError(f"split must be train, valid or test, got {split!r}")
        self.split = split
        self.is_tail = torch.tensor(np.asarray(prepared.is_tail, dtype=bool))
        self.categories = np.asarray(prepared.item_categories)
        self.hit, self.tail, self.diversity, self.repeat = hit, tail, diversity, repeat

    def __call__(self, histories: Sequence[Sequence[int]], pages, user_idx: Sequence[int] | None = None
                 ) -> RewardOutput:
        from rlhf_ray.metrics import category_entropy

        pages = as_pages(pages)
        B, K = pages.shape
        if self.hit and user_idx is None:
            raise ValueError("RuleReward needs user_idx to count hits on the user's relevant items")
        mask = pages >= 0
        safe = pages.clamp(min=0)
        hits = torch.zeros((B, K))
        seen = torch.zeros((B, K), dtype=torch.bool)
        for b in range(B):
            tgt = self.targets.get(int(user_idx[b]), set()) if user_idx is not None else set()
            hist = set(int(i) for i in histories[b])
            row = pages[b].tolist()
            for k, item in enumerate(row):
                if item < 0:
                    continue
                seen[b, k] = item in hist or item in row[:k]
                hits[b, k] = float(item in tgt and not seen[b, k])
        items = (self.hit * hits + self.tail * self.is_tail[safe].float() - self.repeat * seen.float()) * mask
        ent = torch.as_tensor(np.nan_to_num(category_entropy(pages.numpy(), self.categories)), dtype=torch.float32)
        page = self.diversity * ent * per_ln_k(mask)
        return RewardOutput(page, items, page + items.sum(-1))


def per_ln_k(mask: Tensor) -> Tensor:
    """(B,) 1 / ln K', K' = the page's valid items (``mask`` (B, K)); 0 for K' < 2: what turns a page's
    category entropy into the normalised one (1 = K' items of K' categories)."""
    n = mask.sum(-1)
    return torch.where(n >= 2, 1.0 / torch.log(n.clamp(min=2).float()), torch.zeros(n.shape[0]))


def entropy_steps(pages: Tensor, categories: np.ndarray) -> Tensor:
    """(B, K) the page's normalised category entropy gained at each slot:
    ``(H(p[:t+1]) - H(p[:t])) / ln K'`` over valid items (K' = the page's valid items; 0 at padding,
    at the first slot and for a page with K' < 2). A row sums to ``H_cat(page) / ln K'``, the page-level
    term :class:`RuleReward` pays, so the total is the same and only the slot it is credited to moves."""
    from rlhf_ray.metrics import category_entropy

    pages = as_pages(pages)
    B, K = pages.shape
    valid = pages >= 0
    prefix = np.zeros((B, K + 1))
    arr = pages.numpy()
    for t in range(1, K + 1):
        cut = np.where(np.arange(K)[None, :] < t, arr, -1)
        prefix[:, t] = np.nan_to_num(category_entropy(cut, categories))
    steps = torch.as_tensor(np.diff(prefix, axis=1), dtype=torch.float32) * valid
    return steps * per_ln_k(valid)[:, None]


class HitBonus:
    """A :class:`RewardFn` adding grounded terms to another reward (an ensemble of a learned and a
    rule-based reward):

        total = base.total + weight * sum_t hit_t + diversity * H_cat(page) / ln(K')
        hit_t = 1[p_t is a training positive the prompt held out, not seen, not repeated]

    spread over the page as ``page = c_page * base.page + diversity * H_cat / ln K'`` and per slot
    ``items_t = c_item * w_t * base.items_t + weight * hit_t`` (the base's own slot weights w_t),
    so the parts sum to the total exactly (a plain sum: no ``alpha`` attribute). Hits and the
    normalised category entropy are :class:`RuleReward`'s terms, every other rule term off.
    ``diversity_slots``: the entropy term is credited slot by slot instead, each slot the entropy it
    adds (:func:`entropy_steps`), the same total.
    """

    def __init__(self, base: RewardFn, prepared, weight: float, page_coef: float, item_coef: float,
                 item_mode: str = "mean", diversity: float = 0.0, diversity_slots: bool = False):
        self.base, self.weight, self.diversity = base, float(weight), float(diversity)
        self.page_coef, self.item_coef, self.item_mode = page_coef, item_coef, item_mode
        self.diversity_slots = bool(diversity_slots)
        self.categories = np.asarray(prepared.item_categories)
        self.hits = RuleReward(prepared, "train", hit=1.0, tail=0.0, repeat=0.0,
                               diversity=0.0 if self.diversity_slots else self.diversity)
        self.max_history = getattr(base, "max_history", None)

    def __call__(self, histories: Sequence[Sequence[int]], pages, user_idx: Sequence[int] | None = None
                 ) -> RewardOutput:
        pages = as_pages(pages)
        out = self.base(histories, pages, user_idx=user_idx)
        rules = self.hits(histories, pages, user_idx=user_idx)
        mask = (pages >= 0).to(out.items.dtype)
        w = mask / mask.sum(-1, keepdim=True).clamp(min=1.0) if self.item_mode == "mean" else mask
        items = self.item_coef * w * out.items + self.weight * rules.items
        if self.diversity_slots and self.diversity:
            items = items + self.diversity * entropy_steps(pages, self.categories).to(items.dtype)
        page = self.page_coef * out.page + rules.page.to(out.page.dtype)  # rules.page: diversity * H / ln K'
        return RewardOutput(page, items, page + items.sum(-1))
