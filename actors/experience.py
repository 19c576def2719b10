"""The PPO experience batch and the arithmetic that fills it (pure torch, no Ray).

Shapes: B = pages (users) in the batch, K = page slots, L = prompt length,
N = catalogue items. A page slot is an action: a_t = item at slot t, s_t = prompt +
items before t. Token rewards (PageLLM's mixed-grained reward spread over the page):

    r_t = c_item * item_t  +  1[t = last] * c_page * page  -  beta * KL_t

with, for the mixed reward R = alpha * page + (1 - alpha) * mean_t item_t,
c_item = (1 - alpha) / K' and c_page = alpha (K' = valid slots), so that without
the KL term sum_t r_t = R exactly. KL_t is the per-slot estimate of
KL(pi || pi_ref) (losses.kl_penalty), beta the (fixed or adaptive) KL coefficient.
Advantages and returns come from GAE (losses.gae) over the K slots.

What is built where: the controller makes a :class:`PromptBatch` (histories and user ids: the
batch's description, no tensor over the catalogue); each role turns its own rows into
:class:`~rlhf_ray.generation.Prompts` (tokens and the (b, N) seen-item mask) where it uses them
(:meth:`PromptBatch.prompts`). The :class:`Experience` holds the (B, K) / (B,) numbers only; the
trainers pair it with their rows of the same PromptBatch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rlhf_ray.evaluation import pad_lists
from rlhf_ray.generation import Prompts, build_prompts, prompt_length
from rlhf_ray.losses import gae, kl_penalty, masked_mean, whiten
from rlhf_ray.seeding import seed as derive_seed
from rlhf_ray.tokens import Vocab


# --------------------------------------------------------------------------- what the roles exchange


@dataclass
class PromptBatch:
    """The users of one iteration: what rollout, reward, reference, critic and policy read (by reference).

    Only the batch's description travels (one object-store copy, O(B x history)); the prompt
    tokens and the seen-item mask, O(B x N), are built by each rank for its rows (:meth:`prompts`).
    """

    histories: list  # B lists: the user's training history (item_idx), oldest first; all of it is "seen"
    user_idx: Tensor  # (B,) int64 user index
    length: int  # (no rows) L: prompt tokens of the whole batch, so every shard is padded alike
    max_history: int  # (no rows) history items in a prompt (the most recent ones)
    exclude_seen: bool  # (no rows) block the history's items from the page
    targets: list | None = None  # B lists: the page SFT teaches after each prompt (PPO-ptx's page term), or None

    @classmethod
    def make(cls, histories: list, user_idx: Tensor, vocab: Vocab, max_history: int,
             exclude_seen: bool = True, targets: list | None = None) -> "PromptBatch":
        """The batch of these users (``L`` measured here, nothing over the catalogue built)."""
        users = user_idx.tolist() if vocab.n_users else None
        return cls(histories, user_idx, prompt_length(histories, vocab, max_history, users), max_history,
                   exclude_seen, targets)

    def target_pages(self) -> Tensor:
        """(b, longest) int64: these rows' :attr:`targets`, right-padded with -1 (an empty row: all -1)."""
        if self.targets is None:
            raise ValueError("this PromptBatch carries no target pages (PPO-ptx's page term is off)")
        return torch.as_tensor(pad_lists(self.targets))

    def prompts(self, vocab: Vocab) -> Prompts:
        """These rows' prompts: input_ids (b, L), attention_mask (b, L), blocked (b, N) bool (the
        seen items when ``exclude_seen``), as :func:`~rlhf_ray.generation.build_prompts` makes them
        for the whole batch."""
        return build_prompts(self.histories, vocab, self.max_history, exclude_seen=self.exclude_seen,
                             user_idx=self.user_idx.tolist() if vocab.n_users else None, length=self.length)


def holdout_cut(length: int, holdout: int) -> int:
    """Where a rollout prompt ends in a training history of ``length`` items: ``holdout`` before its
    end, at least one item kept (no cut when ``holdout`` is 0)."""
    return max(1, length - holdout) if holdout else length


def held_out_pages(prepared, user_idx, holdout: int, page_size: int, sft_config: dict) -> list[list[int]]:
    """Per user of ``user_idx`` (training users), the page SFT teaches after the rollout prompt's cut
    (:func:`holdout_cut`): from the training positives the prompt holds out, in SFT's page order
    (``sft_config``: the SFT checkpoint's config, ``page_order``/``page_window``/``max_per_category``;
    :func:`rlhf_ray.data.pages.page_after`). Never a validation or test target: the positives come
    from the training range only. Empty for a user who held out no positive."""
    from rlhf_ray.data.pages import MAX_PER_CATEGORY, WINDOW, page_after

    s = prepared.sequences
    where = {int(u): i for i, u in enumerate(s["user_idx"])}
    order = sft_config.get("page_order", "time")
    out = []
    for u in user_idx:
        i = where[int(u)]
        vs = int(s["valid_start"][i])
        items, ratings = np.asarray(s["items"][i])[:vs], np.asarray(s["ratings"][i])[:vs]
        out.append(page_after(items, ratings, holdout_cut(vs, holdout), prepared.positive_threshold, page_size,
                              order, prepared.item_categories, sft_config.get("page_window", WINDOW),
                              sft_config.get("max_per_category", MAX_PER_CATEGORY)))
    return out


def rollout_prompts(histories: list, user_idx, vocab, max_history: int, exclude_seen: bool = True,
                    holdout: int = 0, targets: list | None = None) -> PromptBatch:
    """The prompts of one iteration's users: each user's training history less its newest
    ``holdout`` interactions (kept out of the prompt: what hits pay for; :func:`holdout_cut`),
    and the user's token when the vocabulary has user tokens, as SFT trained and validation
    scores it. ``user_idx`` (B,) int64; ``targets``: each row's page for PPO-ptx's page term.
    Only the description is built here; each rank builds its rows' tokens and mask
    (:meth:`PromptBatch.prompts`)."""
    hist = [h[:holdout_cut(len(h), holdout)] for h in histories]
    return PromptBatch.make(hist, torch.as_tensor(user_idx, dtype=torch.long), vocab, max_history, exclude_seen,
                            targets)


@dataclass
class Rollout:
    """A rollout actor's answer: the sampled pages and the log-probs they were sampled with."""

    pages: Tensor  # (B, K) int64 item_idx a_t, -1 where no item was allowed
    logprobs: Tensor  # (B, K) float32 log pi_old(a_t | s_t) under the restricted distribution, 0 at padding
    shortlist: Tensor | None = None  # (B, M) int64 the items each page was sampled among (None: all)


@dataclass
class RefLogprobs:
    """The reference actor's answer."""

    logprobs: Tensor  # (B, K) float32 log pi_ref(a_t | s_t), frozen SFT policy, 0 at padding


@dataclass
class Values:
    """The critic's answer."""

    values: Tensor  # (B, K) float32 V_old(s_t) before the update, 0 at padding


@dataclass
class Experience:
    """One iteration's rollouts, scored; what the policy and critic train on (with their rows of the
    iteration's :class:`PromptBatch`)."""

    pages: Tensor  # (B, K) int64 item_idx a_t, -1 where no item was allowed
    mask: Tensor  # (B, K) bool: slot t holds an item
    logprobs: Tensor  # (B, K) log pi_old(a_t | s_t), recorded by the rollout actor (0 at padding)
    ref_logprobs: Tensor  # (B, K) log pi_ref(a_t | s_t), frozen SFT policy
    values: Tensor  # (B, K) V_old(s_t) from the critic before the update
    page_reward: Tensor  # (B,) page-level score g
    item_rewards: Tensor  # (B, K) item-level token rewards r_t (0 at padding)
    total_reward: Tensor  # (B,) R the reward function reports
    kl: Tensor  # (B, K) per-slot KL estimate (0 at padding)
    rewards: Tensor  # (B, K) token rewards incl. the KL penalty (module docstring)
    advantages: Tensor  # (B, K) GAE advantages (whitened if configured), 0 at padding
    returns: Tensor  # (B, K) GAE returns = advantages (before whitening) + values, 0 at padding
    shortlist: Tensor | None = None  # (B, M) the rollout's shortlist (ppo.rollout.shortlist; None: all items)

    def __len__(self) -> int:
        return int(self.pages.shape[0])


@dataclass
class RewardMix:
    """How a reward function's ``total`` decomposes: total = c_page * page + sum_t c_item_t * item_t.

    ``item_mode``: "mean" (c_item_t = item_coef / K', the mixed-grained model) or "sum"
    (c_item_t = item_coef, e.g. the rule reward: total = page + sum_t r_t).
    """

    page_coef: float
    item_coef: float
    item_mode: str = "mean"

    def item_weights(self, mask: Tensor) -> Tensor:
        """(B, K) per-slot weight of the item rewards (0 at padding)."""
        m = mask.float()
        if self.item_mode == "mean":
            return self.item_coef * m / m.sum(-1, keepdim=True).clamp(min=1.0)
        return self.item_coef * m


@dataclass
class RewardScores:
    """The reward actor's answer: the reward function's parts, and how its total splits into them."""

    page: Tensor  # (B,) float32 page-level score g
    items: Tensor  # (B, K) float32 item-level rewards r_t, 0 at padding
    total: Tensor  # (B,) float32 R = mix.page_coef * page + sum_t mix.item_weights(mask)_t * items_t
    mix: RewardMix  # (no rows) the decomposition above, which spreads R over the page slots


def last_slot(mask: Tensor) -> Tensor:
    """(B, K) one-hot of each row's last valid slot (all zero for an empty page)."""
    m = mask.long()
    idx = (m * torch.arange(1, m.shape[1] + 1)).argmax(dim=1)  # (B,) position of the last 1
    onehot = torch.zeros_like(m, dtype=torch.float32)
    onehot[torch.arange(m.shape[0]), idx] = 1.0
    return onehot * (m.sum(1, keepdim=True) > 0)


def token_rewards(page: Tensor, items: Tensor, mask: Tensor, kl: Tensor, kl_coef: float,
                  mix: RewardMix) -> Tensor:
    """(B, K) r_t = c_item_t * item_t + 1[t = last] * c_page * page - kl_coef * KL_t (0 at padding)."""
    m = mask.float()
    r = mix.item_weights(mask) * items  # (B, K)
    r = r + last_slot(mask) * (mix.page_coef * page)[:, None]
    return (r - kl_coef * kl) * m


def slot_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str = "k1") -> Tensor:
    """(B, K) KL(pi || pi_ref) estimate per slot, 0 at padding."""
    return kl_penalty(logprobs, ref_logprobs, estimator) * mask.float()


def assemble(pages: Tensor, logprobs: Tensor, ref_logprobs: Tensor, values: Tensor,
             page: Tensor, items: Tensor, total: Tensor, *, mix: RewardMix, kl_coef: float,
             kl_estimator: str = "k1", gamma: float = 1.0, lam: float = 0.95,
             whiten_advantages: bool = True, shortlist: Tensor | None = None) -> Experience:
    """Everything after scoring: KL, token rewards, GAE, whitening -> :class:`Experience`.
    Whitening uses the whole batch's masked mean and variance, so it runs on all B rows at once."""
    mask = pages >= 0  # (B, K)
    kl = slot_kl(logprobs, ref_logprobs, mask, kl_estimator)
    rewards = token_rewards(page, items * mask, mask, kl, kl_coef, mix)
    advantages, returns = gae(rewards, values * mask, mask, gamma=gamma, lam=lam)
    if whiten_advantages:
        advantages = whiten(advantages, mask)
    return Experience(pages=pages, mask=mask, logprobs=logprobs, ref_logprobs=ref_logprobs,
                      values=values, page_reward=page, item_rewards=items * mask, total_reward=total, kl=kl,
                      rewards=rewards, advantages=advantages, returns=returns, shortlist=shortlist)


def experience(rollout: Rollout, scores: RewardScores, ref: RefLogprobs, values: Values, **kw) -> Experience:
    """:func:`assemble` from the roles' answers (``kw``: kl_coef, kl_estimator, gamma, lam, whiten_advantages)."""
    return assemble(rollout.pages, rollout.logprobs, ref.logprobs, values.values, scores.page,
                    scores.items, scores.total, mix=scores.mix, shortlist=rollout.shortlist, **kw)


def experience_stats(exp: Experience) -> dict[str, float]:
    """Scalars to log: rewards, KL, values, advantages."""
    m = exp.mask
    return {
        "reward/total": float(exp.total_reward.mean()),
        "reward/page": float(exp.page_reward.mean()),
        "reward/item": float(masked_mean(exp.item_rewards, m)),
        "reward/token_sum": float(exp.rewards.sum(-1).mean()),
        "kl/per_page": float((exp.kl * m).sum(-1).mean()),
        "kl/per_slot": float(masked_mean(exp.kl, m)),
        "value/mean": float(masked_mean(exp.values, m)),
        "return/mean": float(masked_mean(exp.returns, m)),
        "page/valid_slots": float(m.float().sum(-1).mean()),
    }


def minibatches(n: int, size: int, epochs: int, seed: int) -> list[Tensor]:
    """Index tensors: ``epochs`` seeded permutations of range(n), cut into chunks of ``size``."""
    out = []
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(derive_seed(seed, "minibatches", epoch))
        perm = torch.randperm(n, generator=g)
        out += [perm[s: s + size] for s in range(0, n, size)]
    return out
