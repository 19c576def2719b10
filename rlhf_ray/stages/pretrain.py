"""Stage 1, meta-information pre-training (PageLLM): ground item tokens in their text
and in users' tastes before any page is written.

* L_next: next-token prediction on ``<bos> <item_i> <meta> title | categories <eos>``,
  so each item token's embedding learns to predict its own meta text.
* L_rating: from ``<bos> [<user>] <hist> h_1 .. h_L <sep> <item_t>`` a scalar head on the
  last hidden state predicts the user's rating of item t, scaled to [-1, 1] ((r - 3) / 2).
  The user token (with ``model.user_tokens``) is the one every later stage puts in the prompt.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlhf_ray.config import PretrainConfig
from rlhf_ray.errors import UserError
from rlhf_ray.generation import left_pad, prompt_head
from rlhf_ray.losses import rating_mse, token_nll
from rlhf_ray.model import Heads, backbone_hidden, context_length, forward, hidden_size
from rlhf_ray.seeding import py_random, rng, shard
from rlhf_ray.stages.common import check_context, exporter, run_stage
from rlhf_ray.stages.loop import StageSpec
from rlhf_ray.stages.sft import IGNORE, training_sequences
from rlhf_ray.tokens import Vocab, meta_texts

RATING_MID, RATING_HALF = 3.0, 2.0


def text_examples(prepared, tokenizer, vocab: Vocab, max_len: int) -> list[list[int]]:
    items = prepared.items
    texts = meta_texts(items["title"].astype(str).tolist(), [list(c) for c in items["categories"]])
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [[vocab.bos, vocab.item_token(i), vocab.meta] + ids[: max_len - 4] + [vocab.eos]
            for i, ids in enumerate(enc)]


def rating_example(items, ratings, t: int, vocab: Vocab, max_history: int,
                   user: int | None = None) -> tuple[list[int], float]:
    """``(<bos> [<user>] <hist> h_1..h_L <sep> <item_t>, (r_t - 3) / 2)`` for position t of a user's sequence."""
    hist = items[max(0, t - max_history): t]
    ids = (prompt_head(vocab, user) + [vocab.hist] + [vocab.item_token(int(i)) for i in hist]
           + [vocab.sep, vocab.item_token(int(items[t]))])
    return ids, (float(ratings[t]) - RATING_MID) / RATING_HALF


def rating_examples(seqs, vocab: Vocab, max_history: int, per_user: int, rng: random.Random):
    """(prompt token ids, scaled rating) at ``per_user`` random positions of each training sequence."""
    return [rating_example(s.items, s.ratings, t, vocab, max_history, s.user)
            for s in seqs for t in rng.sample(range(len(s.items)), min(per_user, len(s.items)))]


def text_batch(seqs: list[list[int]], pad: int) -> dict:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.as_tensor(s)
        mask[b, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE)
    labels[:, :3] = IGNORE  # <bos> <item> <meta> are given; the text is predicted
    return {"ids": ids, "mask": mask, "labels": labels}


def rating_batch(examples, pad: int) -> dict:
    ids, mask = left_pad([e[0] for e in examples], pad)
    return {"ids": ids, "mask": mask, "target": torch.tensor([e[1] for e in examples], dtype=torch.float32)}


class PretrainModule(nn.Module):
    def __init__(self, lm: nn.Module, heads: Heads, cfg: PretrainConfig):
        super().__init__()
        self.lm, self.heads = lm, heads
        self.text_weight, self.rating_weight = cfg.text_weight, cfg.rating_weight

    def forward(self, batch: dict):
        dev = next(self.parameters()).device
        loss = torch.zeros((), device=dev)
        stats = {}
        if "text" in batch:
            b = batch["text"]
            logits = forward(self.lm, b["ids"].to(dev), b["mask"].to(dev))
            l_next, _ = token_nll(logits[:, :-1], b["labels"][:, 1:].to(dev))  # shift: position t predicts t+1
            loss = loss + self.text_weight * l_next
            stats["l_next"] = float(l_next.detach())
        if "rating" in batch:
            b = batch["rating"]
            h = backbone_hidden(self.lm, b["ids"].to(dev), b["mask"].to(dev))
            pred = self.heads["rating"](h[:, -1])  # (B,) from the target item's position (left-padded)
            l_rating, _ = rating_mse(pred, b["target"].to(dev))
            loss = loss + self.rating_weight * l_rating
            stats["l_rating"] = float(l_rating.detach())
        return loss, stats


def build_spec(cfg: PretrainConfig, prepared, lm, tokenizer, vocab, catalog, out_dir: Path,
               parent: dict | None = None) -> StageSpec:
    check_context(lm, vocab, cfg.max_history, 1, "<sep> + rated item")
    heads = Heads(hidden_size(lm), ["rating"])
    module = PretrainModule(lm, heads, cfg)
    seqs = training_sequences(prepared)
    texts = text_examples(prepared, tokenizer, vocab, context_length(lm) or cfg.model.n_positions)
    bs = cfg.train.batch_size
    per_user = max(1, int(np.ceil(len(texts) / max(1, len(seqs)))) * 4)

    seed = cfg.train.seed

    def ratings_for(epoch: int):
        return rating_examples(seqs, vocab, cfg.max_history, per_user, py_random(seed, "ratings", epoch))

    n_rating = sum(min(per_user, len(s.items)) for s in seqs)

    def steps(world: int) -> int:
        return max(1, max(len(texts), n_rating if cfg.rating_weight > 0 else 0) // bs)

    def batches(epoch: int, rank: int, world: int):
        ratings = ratings_for(epoch)
        t_order = rng(seed, "text_order", epoch).permutation(len(texts))
        r_order = rng(seed, "rating_order", epoch).permutation(len(ratings))
        n = steps(world)
        per_t = max(1, -(-len(texts) // n) // world)
        per_r = max(1, -(-len(ratings) // n) // world) if ratings else 0
        for i in range(n):
            batch = {}
            if cfg.text_weight > 0:
                batch["text"] = text_batch([texts[j] for j in shard(t_order, i, per_t, rank, world)], vocab.pad)
            if cfg.rating_weight > 0 and ratings:
                batch["rating"] = rating_batch([ratings[j] for j in shard(r_order, i, per_r, rank, world)], vocab.pad)
            yield batch

    valid = _valid_ratings(prepared, vocab, cfg.max_history)
    baselines = rating_baselines(prepared)

    def validate(mod: nn.Module) -> dict:
        if not valid:
            return {}
        errs = []
        for s in range(0, len(valid), 256):
            b = rating_batch(valid[s: s + 256], vocab.pad)
            dev = next(mod.parameters()).device
            h = backbone_hidden(mod.lm, b["ids"].to(dev), b["mask"].to(dev))
            pred = mod.heads["rating"](h[:, -1]).float().cpu()
            errs.append(((pred - b["target"]) * RATING_HALF) ** 2)
        return {"val/rating_rmse": float(torch.cat(errs).mean().sqrt()), **baselines}

    export = exporter(out_dir, stage="pretrain", lm=lm, tokenizer=tokenizer, vocab=vocab, catalog=catalog,
                      config=cfg, prepared=prepared, heads=heads)
    return StageSpec("pretrain", module, batches, steps, validate, export, key_metric="val/rating_rmse", mode="min")


def rating_baselines(prepared) -> dict[str, float]:
    """Validation RMSE of the predictors the rating head must beat, fitted on training ratings:
    the global mean, and each item's mean (shrunk towards the global mean by 5 pseudo-ratings,
    so a rarely rated item is not trusted blindly)."""
    s = prepared.sequences
    tr_items = np.concatenate([np.asarray(it[:vs]) for it, vs in zip(s["items"], s["valid_start"])])
    tr_r = np.concatenate([np.asarray(r[:vs], dtype=float) for r, vs in zip(s["ratings"], s["valid_start"])])
    va_items = np.concatenate([np.asarray(it[vs:ts]) for it, vs, ts in zip(s["items"], s["valid_start"], s["test_start"])])
    va_r = np.concatenate([np.asarray(r[vs:ts], dtype=float) for r, vs, ts in
                           zip(s["ratings"], s["valid_start"], s["test_start"])])
    if not len(va_r) or not len(tr_r):
        return {}
    mu = float(tr_r.mean())
    n = np.bincount(tr_items, minlength=prepared.n_items)
    tot = np.bincount(tr_items, weights=tr_r, minlength=prepared.n_items)
    item_mean = (tot + 5.0 * mu) / (n + 5.0)
    rmse = lambda pred: float(np.sqrt(np.mean((pred - va_r) ** 2)))  # noqa: E731
    return {"val/rating_rmse_global_mean": rmse(np.full_like(va_r, mu)),
            "val/rating_rmse_item_mean": rmse(item_mean[va_items])}


def _valid_ratings(prepared, vocab: Vocab, max_history: int):
    s = prepared.sequences
    return [rating_example(items, ratings, t, vocab, max_history, int(u))
            for u, items, ratings, vs, ts in zip(s["user_idx"], s["items"], s["ratings"], s["valid_start"],
                                                 s["test_start"])
            for t in range(vs, ts)]


def run(cfg: PretrainConfig, data_dir: str, out_dir: str, init: str | None = None) -> dict:
    """Pre-train a fresh model (``init`` must be None: this stage starts every model)."""
    if init:
        raise UserError("pretrain builds a new model; it does not start from a checkpoint")
    return run_stage(build_spec, cfg, data_dir, out_dir, None, cfg.model)
