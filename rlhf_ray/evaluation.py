"""Evaluate a ranker on a prepared split: full-catalogue ranking + generated pages.

* Ranking metrics (NDCG/Recall/HR/MRR@K, head/tail split) come from scoring every
  catalogue item at the page's first slot (seen items excluded): full ranking.
* Page metrics (page Recall/NDCG, WAS, PWKT, ILD, entropy, coverage) come from the
  page the model actually writes with constrained decoding.
Both use :mod:`rlhf_ray.generation`, the code that rollouts and Serve use.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from rlhf_ray import metrics as M
from rlhf_ray.config import GenerationConfig
from rlhf_ray.generation import build_prompts, generate_pages, score_items
from rlhf_ray.tokens import Vocab


def pad_lists(lists, fill=-1, dtype=np.int64, width: int | None = None) -> np.ndarray:
    """Ragged lists -> (B, width) array right-padded with ``fill``."""
    w = width if width is not None else max([len(x) for x in lists] + [1])
    out = np.full((len(lists), w), fill, dtype=dtype)
    for i, x in enumerate(lists):
        x = list(x)[:w]
        out[i, : len(x)] = x
    return out


@torch.no_grad()
def rank_and_generate(model, vocab: Vocab, histories, gen: GenerationConfig, kmax: int, batch_size: int = 256,
                      pages: bool = True, user_idx=None):
    """Top-``kmax`` full-ranking lists and generated pages for a list of histories."""
    was_training = model.training
    model.eval()
    tops, pgs = [], []
    for s in range(0, len(histories), batch_size):
        hb = histories[s: s + batch_size]
        ub = None if user_idx is None else user_idx[s: s + batch_size]
        prompts = build_prompts(hb, vocab, gen.max_history, exclude_seen=gen.exclude_seen, user_idx=ub)
        scores = score_items(model, vocab, prompts)
        tops.append(M.topk_from_scores(scores.cpu().numpy(), kmax))
        if pages:
            pgs.append(generate_pages(model, vocab, prompts, gen).items.numpy())
    model.train(was_training)
    top = np.concatenate(tops) if tops else np.zeros((0, kmax), dtype=np.int64)
    page = np.concatenate(pgs) if pgs else None
    return top, page


def evaluate(model, vocab: Vocab, prepared, split: str = "test", gen: GenerationConfig | None = None,
             ks=(10, 20), max_users: int = 0, batch_size: int = 256, pages: bool = True, prefix: str = ""):
    """Metrics dict and a per-user predictions DataFrame for ``split`` ("valid" or "test")."""
    gen = gen or GenerationConfig()
    hist, targets, target_ratings, users = prepared.histories(split)
    if max_users and len(hist) > max_users:
        hist, targets, target_ratings, users = hist[:max_users], targets[:max_users], target_ratings[:max_users], users[:max_users]
    if not len(hist):
        raise ValueError(f"split {split!r} has no users with a positive target")
    kmax = max(ks)
    use_users = users if vocab.n_users else None
    top, page = rank_and_generate(model, vocab, hist, replace(gen), kmax, batch_size, pages, use_users)
    tgt = pad_lists(targets)
    is_tail = np.asarray(prepared.is_tail, dtype=bool)
    tail_target = np.array([bool(len(t)) and bool(is_tail[t[0]]) for t in targets])
    out = M.ranking_report(top, tgt, ks=ks, is_tail_target=tail_target)
    out["users"] = float(len(hist))
    out["tail_users"] = float(tail_target.sum())
    out["coverage@%d" % kmax] = M.coverage(top, vocab.n_items)
    if page is not None:
        cats = np.asarray(prepared.item_categories, dtype=np.int64)
        K = page.shape[1]
        out[f"page_recall@{K}"] = M.mean(M.recall(page, tgt))
        out[f"page_ndcg@{K}"] = M.mean(M.ndcg(page, tgt))
        out[f"tail_page_recall@{K}"] = M.by_group(M.recall(page, tgt), tail_target)["tail"]
        out.update({f"page_{k}": v for k, v in M.page_report(page, cats, vocab.n_items).items()})
        # rating-aware page quality: ratings known only for the user's held-out targets
        rated = [dict(zip(t, r)) for t, r in zip(targets, target_ratings)]
        page_r = np.array([[d.get(int(i), np.nan) for i in row] for d, row in zip(rated, page)], dtype=float)
        ideal = pad_lists([sorted(r, reverse=True) for r in target_ratings], fill=np.nan, dtype=float)
        out["page_was"] = M.mean(M.was(page, page_r, ideal))
        out["page_pwkt"] = M.mean(M.pwkt(page_r))
    preds = pd.DataFrame({
        "user_idx": np.asarray(users, dtype=np.int64),
        "targets": [list(map(int, t)) for t in targets],
        "ranking": [list(map(int, r)) for r in top],
    })
    if page is not None:
        preds["page"] = [list(map(int, r)) for r in page]
    return {f"{prefix}{k}": float(v) for k, v in out.items()}, preds
