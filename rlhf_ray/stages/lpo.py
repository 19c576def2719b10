"""Stage LPO: listwise preference optimisation for tail items (LPO4Rec, arXiv 2507.02255),
with DPO and S-DPO as baselines, starting from an SFT checkpoint.

One example is a user's training history cut before a positive item: ``h = i_<t``,
positive ``p = i_t``. The policy scores every item at the page's first slot
(the ``<page>`` prompt of :func:`rlhf_ray.generation.build_prompts`, with the
user's token when the vocabulary has user tokens, seen items blocked):

    s(v) = log pi_theta(v | h)                      restricted log-softmax over items
    s(v) = log pi_theta(v | h) - log pi_ref(v | h)  with a frozen reference (``reference``,
                                                    always for dpo / sdpo)

N negatives ``n_1..n_N`` are drawn from the pool (all | head | tail) minus every
item the user has interacted with in training (so never the positive or a seen
item) by the configured sampler; the default is Gumbel-top-k on ``s / tau``, i.e.
without replacement with p(v) ~ exp(s(v) / tau): the items the model wrongly
prefers, more uniformly as tau grows. The objective over a batch of B examples:

    L = (1/B) sum_b w_b (ce_weight * CE_b + lpo_weight * P_b)           (``reweight_on: both``)
    L = (1/B) sum_b (ce_weight * CE_b + lpo_weight * w_b P_b)           (``reweight_on: preference``)
    CE_b = -log pi_theta(p_b | h_b)
    P_b  = -log( exp(beta s+) / (exp(beta s+) + sum_j exp(beta s-_j)) )   (lpo)
    w    = B softmax(strength * 1[p_b is a tail item])                     (mean 1; ``reweight: static``)
    w    = B softmax(strength * (1[p_b is tail] + z_b))                    (``reweight: adaptive``: z_b the
                                                                            standardised detached loss of row b)

``P_b`` is :func:`~rlhf_ray.losses.lpo_softmax`, ``lpo_sigmoid``, ``dpo`` (one
negative) or ``sdpo`` by ``cfg.loss``; weights come from ``tail_reweight``.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rlhf_ray.config import LPOConfig
from rlhf_ray.errors import UserError
from rlhf_ray.generation import build_prompts, page_logprobs
from rlhf_ray.losses import dpo, lpo_sigmoid, lpo_softmax, sdpo, tail_reweight
from rlhf_ray.model import unwrap
from rlhf_ray.sampling import (
    candidate_mask, gumbel_topk_negatives, in_batch_negatives, popularity_negatives, uniform_negatives,
)
from rlhf_ray.seeding import py_random, rng, shard
from rlhf_ray.seeding import seed as derive_seed
from rlhf_ray.stages.common import check_context, exporter, ranking_validator, run_stage
from rlhf_ray.stages.loop import StageSpec
from rlhf_ray.stages.sft import Sequence, training_sequences
from rlhf_ray.tokens import Vocab


@dataclass
class Example:
    history: np.ndarray  # (t,) item_idx before the positive, chronological
    positive: int  # item_idx of the next positive interaction i_t
    seen: np.ndarray  # (S,) every training item of the user: never drawn as a negative
    user: int | None = None  # user_idx (its token leads the prompt when the vocabulary has user tokens)


def cut_points(s: Sequence, threshold: float) -> np.ndarray:
    """Positions t >= 1 whose item is a positive seen there for the first time, ascending."""
    _, first = np.unique(s.items, return_index=True)
    first_time = np.zeros(len(s.items), dtype=bool)
    first_time[first] = True
    return np.flatnonzero((s.ratings > threshold) & first_time & (np.arange(len(s.items)) >= 1))


def lpo_examples(seqs: list[Sequence], threshold: float, per_user: int, rng: random.Random) -> list[Example]:
    """``per_user`` examples per user: the newest positive cut plus random earlier ones."""
    out = []
    for s in seqs:
        cuts = cut_points(s, threshold).tolist()
        if not cuts:
            continue
        chosen = cuts if len(cuts) <= per_user else sorted(rng.sample(cuts[:-1], per_user - 1) + [cuts[-1]])
        seen = np.unique(s.items)
        out.extend(Example(s.items[:t], int(s.items[t]), seen, s.user) for t in chosen)
    return out


def enough_negatives(seqs: list[Sequence], pool: np.ndarray, n: int) -> list[Sequence]:
    """Users with at least ``n`` pool items they never interacted with (else no full row of negatives)."""
    return [s for s in seqs if int(pool.sum() - pool[np.unique(s.items)].sum()) >= n]


def example_batch(examples: list[Example], vocab: Vocab, max_history: int, is_tail: np.ndarray) -> dict:
    """Prompts (seen items blocked) and per-row positive, exclusions and tail flag, on CPU."""
    B = len(examples)
    prompts = build_prompts([e.history for e in examples], vocab, max_history, user_idx=[e.user for e in examples])
    exclude = torch.zeros((B, vocab.n_items), dtype=torch.bool)  # (B, n_items)
    for b, e in enumerate(examples):
        exclude[b, torch.as_tensor(e.seen, dtype=torch.long)] = True
        exclude[b, e.positive] = True
    pos = torch.tensor([e.positive for e in examples], dtype=torch.long)  # (B,)
    return {"prompts": prompts, "pos": pos, "exclude": exclude, "tail": torch.as_tensor(is_tail[pos.numpy()])}


def restricted_logprobs(lm: nn.Module, vocab: Vocab, batch: dict) -> Tensor:
    """(B, n_items) log pi(v | history) over allowed items at the first page slot (blocked = -inf)."""
    res = page_logprobs(lm, vocab, batch["prompts"], batch["pos"][:, None], logits_out=True)
    return torch.log_softmax(res["logits"][:, 0], dim=-1)  # (B, n_items)


# one entry per --loss: (pi+ (B,), pi- (B, N), ref+ (B,), ref- (B, N), beta) -> per-example loss (B,)
PREFERENCE_LOSSES = {
    "lpo": lambda pp, pn, rp, rn, beta: lpo_softmax(pp - rp, pn - rn, beta, reduction="none")[0],
    "lpo_sigmoid": lambda pp, pn, rp, rn, beta: lpo_sigmoid(pp - rp, pn - rn, beta, reduction="none")[0],
    "dpo": lambda pp, pn, rp, rn, beta: dpo(pp, pn[:, 0], rp, rn[:, 0], beta, reduction="none")[0],
    "sdpo": lambda pp, pn, rp, rn, beta: sdpo(pp, pn, rp, rn, beta, reduction="none")[0],
}


class LPOModule(nn.Module):
    """``forward(batch) -> (loss, stats)``; the reference policy is held outside the module tree."""

    def __init__(self, lm: nn.Module, vocab: Vocab, cfg: LPOConfig, is_tail: np.ndarray,
                 popularity: np.ndarray, reference: nn.Module | None = None):
        super().__init__()
        self.lm = lm
        self.vocab = vocab
        self.cfg = cfg
        self.register_buffer("is_tail", torch.tensor(np.asarray(is_tail), dtype=torch.bool), persistent=False)
        self.register_buffer("popularity", torch.tensor(np.asarray(popularity), dtype=torch.long), persistent=False)
        self._ref = [reference] if reference is not None else []  # a list: not a registered submodule
        self._generators: dict[str, torch.Generator] = {}
        self.seed = cfg.train.seed

    def reference(self, device: torch.device) -> nn.Module | None:
        if not self._ref:
            return None
        ref = self._ref[0]
        if next(ref.parameters()).device != device:
            ref.to(device)  # DeepSpeed / Engine moved the policy after this copy was made
        return ref

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            from rlhf_ray.engine import rank_world

            self._generators[key] = torch.Generator(device=device).manual_seed(
                derive_seed(self.seed, "negatives", rank_world()[0]))
        return self._generators[key]

    @torch.no_grad()
    def sample_negatives(self, scores: Tensor, batch: dict) -> Tensor:
        """(B, N) negatives for each row: in the pool, never an excluded (seen / positive) item."""
        cfg, dev = self.cfg, scores.device
        pool = candidate_mask(self.is_tail.to(dev), cfg.pool)  # (n_items,)
        exclude, pos, gen, n = batch["exclude"].to(dev), batch["pos"].to(dev), self.generator(dev), cfg.negatives
        if cfg.sampler == "gumbel":
            return gumbel_topk_negatives(scores.detach(), n, cfg.tau, pool, exclude, generator=gen)
        if cfg.sampler == "uniform":
            return uniform_negatives(exclude, n, pool, generator=gen)
        if cfg.sampler == "popularity":
            return popularity_negatives(self.popularity.to(dev).float(), exclude, n, pool, generator=gen)
        return in_batch_negatives(pos, n, exclude, candidate_mask=pool, generator=gen)

    def weights(self, batch: dict, losses: Tensor) -> Tensor:
        """(B,) example weights, mean 1: w = B softmax(strength * 1[tail target]) (static), plus the
        standardised per-example ``losses`` inside the softmax (adaptive): tail and hard rows weigh more."""
        adaptive = losses if self.cfg.reweight == "adaptive" else None
        return tail_reweight(batch["tail"].to(losses.device), self.cfg.reweight_strength, adaptive)

    def forward(self, batch: dict):
        cfg = self.cfg
        dev = next(self.lm.parameters()).device
        pos, tail = batch["pos"].to(dev), batch["tail"].to(dev)
        logp = restricted_logprobs(self.lm, self.vocab, batch)  # (B, n_items), carries the graph
        ref = self.reference(dev)
        ref_logp = torch.zeros_like(logp)
        if ref is not None:
            with torch.no_grad():
                ref_logp = restricted_logprobs(ref, self.vocab, batch).to(logp.dtype)
        scores = (logp - ref_logp).detach()  # s(v): the score the preference loss and the Gumbel sampler see
        neg = self.sample_negatives(scores.nan_to_num(nan=-math.inf), batch)  # (B, N); blocked: -inf - -inf
        pi_pos, pi_neg = logp.gather(1, pos[:, None]).squeeze(1), logp.gather(1, neg)  # (B,), (B, N)
        ref_pos, ref_neg = ref_logp.gather(1, pos[:, None]).squeeze(1), ref_logp.gather(1, neg)
        ce = -pi_pos  # (B,)
        pref = PREFERENCE_LOSSES[cfg.loss](pi_pos, pi_neg, ref_pos, ref_neg, cfg.beta)  # (B,)
        per_example = cfg.ce_weight * ce + cfg.lpo_weight * pref  # (B,)
        if cfg.reweight_on == "preference":  # CE keeps uniform weights; only P_b leans to the tail
            w = self.weights(batch, pref)  # (B,), mean 1, detached
            loss = (cfg.ce_weight * ce + cfg.lpo_weight * w * pref).mean()
        else:
            w = self.weights(batch, per_example)
            loss = (w * per_example).mean()
        return loss, diagnostics(ce, pref, pi_pos - ref_pos, pi_neg - ref_neg, w, tail, self.is_tail[neg])


@torch.no_grad()
def diagnostics(ce: Tensor, pref: Tensor, s_pos: Tensor, s_neg: Tensor, w: Tensor, tail: Tensor,
                neg_is_tail: Tensor) -> dict[str, float]:
    """Per-step numbers to log.

    pos_margin = mean_b (s+ - mean_j s-_j); accuracy = frac(s+ > max_j s-_j);
    neg_tail_share = fraction of negatives that are tail items;
    weight_entropy = H(w / sum w) / log B (1 = uniform weights);
    tail_weight_mean = mean w over tail-target rows (1.0, the uniform weight, when there are none).
    """
    B = w.numel()
    p = w / w.sum()
    entropy = float(-(p * p.clamp_min(1e-12).log()).sum() / math.log(B)) if B > 1 else 1.0
    return {
        "ce": float(ce.mean()),
        "pref": float(pref.mean()),
        "pos_margin": float((s_pos - s_neg.mean(dim=1)).mean()),
        "accuracy": float((s_pos > s_neg.max(dim=1).values).float().mean()),
        "neg_tail_share": float(neg_is_tail.float().mean()),
        "tail_target_frac": float(tail.float().mean()),
        "tail_weight_mean": float(w[tail].mean()) if bool(tail.any()) else 1.0,
        "weight_entropy": entropy,
    }


def frozen_copy(lm: nn.Module) -> nn.Module:
    ref = copy.deepcopy(unwrap(lm)).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def build_spec(cfg: LPOConfig, prepared, lm, tokenizer, vocab, catalog, out_dir: Path, parent=None) -> StageSpec:
    check_context(lm, vocab, cfg.max_history, 1, "first page slot")
    is_tail = np.asarray(prepared.is_tail, dtype=bool)
    pool = candidate_mask(torch.tensor(is_tail), cfg.pool).numpy()
    seqs = enough_negatives(training_sequences(prepared), pool, cfg.negatives)
    if not seqs:
        raise UserError(f"no user has {cfg.negatives} never-seen items in pool {cfg.pool!r}: "
                        f"lower --n-negatives or use --pool all")
    reference = frozen_copy(lm) if cfg.uses_reference else None
    module = LPOModule(lm, vocab, cfg, is_tail, prepared.popularity, reference)
    bs, seed = cfg.train.batch_size, cfg.train.seed

    def examples_for(epoch: int) -> list[Example]:
        return lpo_examples(seqs, prepared.positive_threshold, cfg.examples_per_user,
                            py_random(seed, "examples", epoch))

    n_examples = len(examples_for(0))  # the same count every epoch (per-user count is fixed)

    def steps(world: int) -> int:
        return max(1, n_examples // bs)

    def batches(epoch: int, rank: int, world: int):
        examples = examples_for(epoch)
        order = rng(seed, "order", epoch).permutation(len(examples))
        per_w = bs // world
        for i in range(steps(world)):
            yield example_batch([examples[j] for j in shard(order, i, per_w, rank, world)], vocab, cfg.max_history,
                                is_tail)

    validate = ranking_validator(prepared, vocab, cfg, cfg.train.eval_users)

    export = exporter(out_dir, stage="lpo", lm=lm, tokenizer=tokenizer, vocab=vocab, catalog=catalog,
                      config=cfg, prepared=prepared, parent=parent)
    return StageSpec("lpo", module, batches, steps, validate, export, key_metric="val/ndcg@10", mode="max")


def run(cfg: LPOConfig, data_dir: str, out_dir: str, init: str | None = None) -> dict:
    """Align the SFT checkpoint ``init`` with ``cfg.loss`` in this process (or Ray Train worker)."""
    if not init:
        raise UserError("lpo starts from an SFT checkpoint: give --sft DIR")
    return run_stage(build_spec, cfg, data_dir, out_dir, init, None)
