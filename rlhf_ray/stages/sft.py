"""Stage 2, SFT: the user's history as the prompt, the ground-truth ranked page as the target.

Two losses share each step (PageLLM's L_rank, plus the dense next-item signal
sequential recommenders train on, so every interaction teaches the model):

* L_rank: ``-mean_k log pi(p_k | prompt, p_<k)`` over the golden page under the
  same restricted item distribution decoding uses (no seen or repeated items);
  the golden page at a cut point t is the user's next K positive training items in time
  order (``page_order: time``) or the ground-truth page of :mod:`rlhf_ray.data.pages`
  (``ground_truth``: by rating, then recency, diversified; the reward model's chosen page).
* L_next: next-item cross-entropy over the item vocabulary at every position of a
  history window ``<bos> [<user>] <hist> i_1 .. i_L``.

With user tokens (``model.user_tokens``) every window and page prompt carries its own
user's token (:func:`rlhf_ray.generation.prompt_head`), as validation, evaluation, the
reward model, PPO and Serve do: the user rows are trained on the prompts they are scored on.

Both losses are softmaxes over the whole catalogue. With ``sampled_softmax: N`` they become
sampled softmaxes (:func:`rlhf_ray.losses.sampled_item_nll`): each step draws N negatives
for the whole batch (``popularity`` or ``uniform`` q, :func:`rlhf_ray.sampling.shared_negatives`),
and a target is scored against them with a log-Q correction, so the output projection
costs N + (targets) rows instead of n_items per position. Validation ranks the full catalogue.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from rlhf_ray.config import ConfigError, SFTConfig
from rlhf_ray.config.common import PAGE_MAX_PER_CATEGORY, PAGE_WINDOW
from rlhf_ray.data.pages import page_after
from rlhf_ray.evaluation import pad_lists
from rlhf_ray.generation import build_prompts, page_logprobs, page_states, prompt_head
from rlhf_ray.losses import sampled_item_nll, token_nll
from rlhf_ray.model import backbone_hidden, item_rows
from rlhf_ray.sampling import shared_negatives
from rlhf_ray.seeding import py_random, rng, seed, shard
from rlhf_ray.stages.common import check_context, exporter, ranking_validator, run_stage
from rlhf_ray.stages.loop import StageSpec
from rlhf_ray.tokens import Vocab

IGNORE = -100


@dataclass
class Sequence:
    items: np.ndarray  # (n,) item_idx, chronological, training part only
    ratings: np.ndarray  # (n,)
    user: int | None = None  # user_idx (None: an anonymous sequence, never a user token)


class Window(NamedTuple):
    """A next-item training window: consecutive items of one user's training part."""

    items: np.ndarray  # (L,) item_idx, chronological
    user: int | None  # user_idx of the sequence it was cut from


class PageExample(NamedTuple):
    """A page target: the history before a cut point and the page the user should be shown there."""

    history: np.ndarray  # (t,) item_idx before the cut, chronological
    page: list[int]  # item_idx, best first
    user: int | None  # user_idx


def training_sequences(prepared) -> list[Sequence]:
    s = prepared.sequences
    return [Sequence(np.asarray(it[:vs]), np.asarray(r[:vs]), int(u)) for u, it, r, vs in
            zip(s["user_idx"], s["items"], s["ratings"], s["valid_start"]) if vs > 0]


def next_item_windows(seqs: list[Sequence], max_history: int, stride: int) -> list[Window]:
    """Windows of at most ``max_history`` items; the newest window always ends at the last item."""
    out = []
    for s in seqs:
        n = len(s.items)
        ends = list(range(n, max_history, -stride)) or [n]
        if ends[-1] > max_history and n >= max_history:
            ends.append(max_history)
        for e in ends:
            out.append(Window(s.items[max(0, e - max_history): e], s.user))
    return out


def golden_pages(seqs: list[Sequence], K: int, cuts: int, threshold: float, rng: random.Random,
                 order: str = "time", categories: np.ndarray | None = None, window: int = PAGE_WINDOW,
                 max_per_category: int = PAGE_MAX_PER_CATEGORY) -> list[PageExample]:
    """(history, page, user) examples at ``cuts`` cut points (each a positive's position; the last is always one).

    ``order="time"``: the next K positives in time order. ``order="ground_truth"``: the good page of
    :mod:`rlhf_ray.data.pages` (positives of the next ``window`` items by rating, then recency,
    diversified over ``categories``, the item -> category code array)."""
    if order == "ground_truth" and categories is None:
        raise ValueError("golden_pages: order='ground_truth' needs the item categories")
    out = []
    for s in seqs:
        pos_idx = np.flatnonzero(s.ratings > threshold)
        if len(pos_idx) == 0 or cuts == 0:
            continue
        cand = sorted({int(p) for p in pos_idx if p >= 1})
        if not cand:
            continue
        chosen = cand if len(cand) <= cuts else sorted(rng.sample(cand, cuts - 1) + [cand[-1]])
        for t in chosen:
            page = page_after(s.items, s.ratings, t, threshold, K, order, categories, window, max_per_category)
            if page:
                out.append(PageExample(s.items[:t], page, s.user))
    return out


def window_batch(windows: list[Window], vocab: Vocab) -> dict:
    """``<bos> [<user>] <hist> i_1..i_L`` right-padded; label at position j = the next item (item_idx)."""
    heads = [prompt_head(vocab, w.user) + [vocab.hist] for w in windows]
    seqs = [h + [vocab.item_token(int(i)) for i in w.items] for h, w in zip(heads, windows)]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), vocab.pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for b, (h, s, w) in enumerate(zip(heads, seqs, windows)):
        ids[b, : len(s)] = torch.as_tensor(s)
        mask[b, : len(s)] = 1
        j = len(h) - 1  # <hist> predicts i_1, item 1 predicts i_2, ...
        labels[b, j: j + len(w.items)] = torch.tensor(np.asarray(w.items, dtype=np.int64))
    return {"ids": ids, "mask": mask, "labels": labels}


def page_batch(examples: list[PageExample], vocab: Vocab, max_history: int) -> dict:
    """The page prompts (``<bos> [<user>] <hist> .. <page>``, seen items blocked) and golden pages."""
    prompts = build_prompts([e.history for e in examples], vocab, max_history, user_idx=[e.user for e in examples])
    pages = torch.as_tensor(pad_lists([e.page for e in examples]))  # (B, K) right-padded with -1
    return {"prompts": prompts, "pages": pages}


class SFTModule(nn.Module):
    def __init__(self, lm: nn.Module, vocab: Vocab, cfg: SFTConfig):
        super().__init__()
        self.lm = lm
        self.vocab = vocab
        self.rank_weight = cfg.rank_weight
        self.next_weight = cfg.next_weight
        self.smoothing = cfg.label_smoothing
        if cfg.sampled_softmax:
            check_item_rows(lm, vocab)

    def forward(self, batch: dict):
        dev = next(self.parameters()).device
        if batch.get("negatives") is not None:
            return self._sampled(batch, dev)
        v = self.vocab
        loss = torch.zeros((), device=dev)
        stats = {}
        if "windows" in batch and self.next_weight > 0:
            w = batch["windows"]
            ids, mask, labels = w["ids"].to(dev), w["mask"].to(dev), w["labels"].to(dev)
            logits = self.lm(input_ids=ids, attention_mask=mask, use_cache=False).logits
            item_logits = logits[..., v.item_offset: v.item_offset + v.n_items]  # (B, T, n_items)
            l_next, s = token_nll(item_logits, labels, self.smoothing)
            loss = loss + self.next_weight * l_next
            stats["l_next"] = float(l_next.detach())  # the objective (smoothed when label_smoothing > 0)
            stats["nll_next"] = s["nll"]  # the plain NLL: comparable across smoothing settings
        if "pages" in batch and self.rank_weight > 0:
            p = batch["pages"]
            res = page_logprobs(self.lm, v, p["prompts"], p["pages"])
            l_rank = -(res["logprobs"].sum() / res["mask"].sum().clamp(min=1))
            loss = loss + self.rank_weight * l_rank
            stats["l_rank"] = float(l_rank.detach())
        return loss, stats

    def _sampled(self, batch: dict, dev: torch.device):
        """Both losses as sampled softmaxes against ``batch["negatives"]`` (see the module docstring).

        The item rows of the negatives and of every target are gathered in one call
        (:func:`rlhf_ray.model.item_rows`), so the step pays one dense gradient buffer of the
        output projection, not one per gather."""
        neg = {k: t.to(dev) for k, t in batch["negatives"].items()}
        items = neg["items"]  # (S,)
        terms = []  # (stat name, weight, hidden (P, H), targets (P,), keep (P, S), count)
        if "windows" in batch and self.next_weight > 0:
            w = batch["windows"]
            ids, mask, labels = w["ids"].to(dev), w["mask"].to(dev), w["labels"].to(dev)
            sel = labels != IGNORE
            targets = labels[sel]  # (P,) positions with a next item
            keep = items[None, :] != targets[:, None]  # (P, S) accidental hits dropped
            terms.append(("l_next", self.next_weight, backbone_hidden(self.lm, ids, mask)[sel], targets, keep,
                          sel.sum()))
        if "pages" in batch and self.rank_weight > 0:
            p = batch["pages"]
            hidden, pages, blocked = page_states(self.lm, self.vocab, p["prompts"], p["pages"])
            slot = pages >= 0  # (B, K)
            same = (pages[:, :, None] == items[None, None, :]).long()  # (B, K, S)
            before = (same.cumsum(dim=1) - same) > 0  # negative already on the page before slot k
            keep = ~(blocked[:, items][:, None, :] | before | same.bool())  # the restricted distribution
            terms.append(("l_rank", self.rank_weight, hidden[slot], pages[slot], keep[slot], slot.sum()))
        rows, bias = item_rows(self.lm, self.vocab, torch.cat([items] + [t[3] for t in terms]))
        S = at = len(items)
        loss = torch.zeros((), device=dev)
        stats = {}
        for name, weight, hidden, targets, keep, count in terms:
            tgt = slice(at, at + len(targets))
            at += len(targets)
            pos = (hidden * rows[tgt]).sum(-1)  # (P,)
            negs = hidden @ rows[:S].T  # (P, S)
            if bias is not None:
                pos, negs = pos + bias[tgt], negs + bias[:S]
            term = sampled_item_nll(pos, negs, neg["log_correction"], keep).sum() / count.clamp(min=1)
            loss = loss + weight * term
            stats[name] = float(term.detach())
        return loss, stats


@torch.no_grad()
def check_item_rows(lm: nn.Module, vocab: Vocab) -> None:
    """Sampled softmax scores items as hidden @ rows.T (+ b): refuse a model whose own logits
    differ from that (a logit transform after the projection, an adapter on the head)."""
    was = lm.training
    lm.eval()
    try:
        ids = torch.tensor([[vocab.bos, vocab.hist]], device=next(lm.parameters()).device)
        mask = torch.ones_like(ids)
        full = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits[0, -1]
        full = full[vocab.item_offset: vocab.item_offset + vocab.n_items].float()
        rows, bias = item_rows(lm, vocab, torch.arange(vocab.n_items, device=ids.device))
        mine = backbone_hidden(lm, ids, mask)[0, -1] @ rows.T + (0 if bias is None else bias)
    finally:
        lm.train(was)
    if not torch.allclose(full, mine.float(), rtol=1e-3, atol=1e-3):
        raise ConfigError("sampled_softmax: this model's item logits are not its final hidden state times "
                          "the output projection's item rows, so sampled items cannot be scored alone; "
                          "set sampled_softmax: 0")


def sampler_weights(cfg: SFTConfig, prepared) -> torch.Tensor | None:
    """q of the sampled negatives: training popularity + 1 (every item > 0), or None = uniform."""
    if cfg.sampled_softmax_sampler == "uniform":
        return None
    return torch.as_tensor(np.asarray(prepared.popularity, dtype=np.float64) + 1.0)


def build_spec(cfg: SFTConfig, prepared, lm, tokenizer, vocab, catalog, out_dir: Path, parent=None,
               stage: str = "sft") -> StageSpec:
    check_context(lm, vocab, cfg.max_history, cfg.page_size)
    seqs = training_sequences(prepared)
    windows = next_item_windows(seqs, cfg.max_history, cfg.window_stride)
    module = SFTModule(lm, vocab, cfg)
    bs, base = cfg.train.batch_size, cfg.train.seed

    def steps(world: int) -> int:
        return max(1, len(windows) // bs) if cfg.next_weight > 0 else max(1, len(pages_for(0)) // bs)

    def pages_for(epoch: int):
        return golden_pages(seqs, cfg.page_size, cfg.page_cuts, prepared.positive_threshold,
                            py_random(base, "page_cuts", epoch), cfg.page_order, prepared.item_categories,
                            cfg.page_window, cfg.max_per_category)

    q = sampler_weights(cfg, prepared) if cfg.sampled_softmax else None

    def batches(epoch: int, rank: int, world: int):
        order = rng(base, "windows", epoch).permutation(len(windows))
        pages = pages_for(epoch)
        p_order = rng(base, "pages", epoch).permutation(len(pages))
        neg_gen = torch.Generator().manual_seed(seed(base, "negatives", epoch, rank))
        n_steps = steps(world)
        per_w = bs // world
        per_p = max(1, -(-len(pages) // n_steps) // world) if pages else 0
        for i in range(n_steps):
            batch = {}
            if cfg.next_weight > 0:
                batch["windows"] = window_batch([windows[j] for j in shard(order, i, per_w, rank, world)], vocab)
            if cfg.rank_weight > 0 and pages:
                chunk = [pages[j] for j in shard(p_order, i, per_p, rank, world)]
                batch["pages"] = page_batch(chunk, vocab, cfg.max_history)
            if cfg.sampled_softmax:
                items, corr = shared_negatives(cfg.sampled_softmax, vocab.n_items, q, neg_gen)
                batch["negatives"] = {"items": items, "log_correction": corr}
            yield batch

    validate = ranking_validator(prepared, vocab, cfg, cfg.train.eval_users)
    export = exporter(out_dir, stage=stage, lm=lm, tokenizer=tokenizer, vocab=vocab, catalog=catalog,
                      config=cfg, prepared=prepared, parent=parent)
    return StageSpec(stage, module, batches, steps, validate, export, key_metric="val/ndcg@10", mode="max")


def run(cfg: SFTConfig, data_dir: str, out_dir: str, init: str | None = None) -> dict:
    """Train SFT in this process (or this Ray Train worker); returns final metrics."""
    return run_stage(build_spec, cfg, data_dir, out_dir, init, cfg.model)
