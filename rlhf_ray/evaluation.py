"""Evaluate a ranker on a prepared split: full-catalogue ranking + generated pages.

* Ranking metrics (NDCG/Recall/HR/MRR@K, head/tail split) come from scoring every
  catalogue item at the page's first slot (seen items excluded): full ranking.
* Page metrics (page Recall/NDCG, WAS, PWKT, ILD, category entropy/coverage, redundancy,
  coverage) come from the page the model actually writes with constrained decoding.

Two protocols (:data:`PROTOCOLS`), picked by the prepared data's split:

* ``loo``: leave-one-out, the sequential-recommender protocol (SASRec, LPO4Rec): one
  held-out positive per user, full ranking at K = 10, 20. WAS and PWKT are "n/a" (one
  held-out rating per user).
* ``pagellm``: PageLLM's per-user temporal 80/10/10 split: every held-out positive is a
  target; the generated page is judged (page Recall/NDCG@10/20, WAS, PWKT, ILD,
  redundancy) and the full ranking at K = 20, 40, 100.

Metrics undefined under a protocol (or for every evaluated user) are never reported as a
number or NaN: :func:`evaluate_full` returns them in ``na`` with the reason.
Both use :mod:`rlhf_ray.generation`, the code that rollouts and Serve use.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

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
    """Top-``kmax`` full-ranking lists and generated pages for a list of histories; ``user_idx``:
    each row's user, whose token leads its prompt when the vocabulary has user tokens."""
    was_training = model.training
    model.eval()
    tops, pgs = [], []
    for s in range(0, len(histories), batch_size):
        hb = histories[s: s + batch_size]
        ub = None if user_idx is None else user_idx[s: s + batch_size]
        prompts = build_prompts(hb, vocab, gen.max_history, exclude_seen=gen.exclude_seen, user_idx=ub)
        if pages:  # the page's first slot is the full ranking: the prompt runs once
            page = generate_pages(model, vocab, prompts, gen)
            scores = page.first_scores
            pgs.append(page.items.numpy())
        else:
            scores = score_items(model, vocab, prompts)
        tops.append(M.topk_from_scores(scores.cpu().numpy(), kmax))
    model.train(was_training)
    top = np.concatenate(tops) if tops else np.zeros((0, kmax), dtype=np.int64)
    page = np.concatenate(pgs) if pgs else None
    return top, page


#: Per-protocol facts: metrics undefined under a protocol, with the reason shown as "n/a".
PROTOCOLS = {
    "loo": {
        "split": "leave_one_out",
        "ks": (10, 20),
        "undefined": {
            "page_was": "n/a under leave-one-out: one held-out rating per user, so WAS reduces to a hit "
                        "discount (use the temporal protocol)",
            "page_pwkt": "n/a under leave-one-out: one held-out rating per user, so no page position pair "
                         "has two known ratings (use the temporal protocol)",
        },
    },
    "pagellm": {"split": "temporal", "ks": (10, 20, 40, 100), "undefined": {}},
}


def protocol_of(prepared) -> str:
    """"loo" (leave-one-out, sequential-recommender protocol) or "pagellm" (temporal 80/10/10)."""
    split = prepared.config.split
    for name, p in PROTOCOLS.items():
        if p["split"] == split:
            return name
    raise ValueError(f"{prepared.path}: split {split!r} has no evaluation protocol")


class Scored(NamedTuple):
    """Metrics of ranking lists / pages for U users, before averaging."""

    per_user: dict  # name -> (U,) float array; NaN = undefined for that user (left out of means)
    scalars: dict  # name -> float: list-level figures (catalogue coverage) and counts
    na: dict  # name -> reason: metrics undefined here, reported as "n/a", never as a number


def _targets_where(targets: list[list[int]], keep: np.ndarray) -> np.ndarray:
    """(U, T) each user's targets t with keep[t] (e.g. the tail items), -1 padded."""
    return pad_lists([[t for t in ts if keep[t]] for ts in targets])


def score_lists(top: np.ndarray, page: np.ndarray | None, targets, target_ratings, prepared,
                protocol: str, ks=None, is_tail: np.ndarray | None = None) -> Scored:
    """Every metric of a protocol from ranking lists and (optionally) generated pages.

    ``top`` (U, >= max(ks)) full-catalogue ranking, best first, seen items excluded;
    ``page`` (U, K) the page the method writes (a ranker without a generator passes its
    top-K); ``targets``/``target_ratings`` per-user lists from ``Prepared.histories``.
    Tail: a target is a tail item per ``is_tail`` (default: the data's own flag);
    ``tail_*`` metrics treat only a user's tail targets as relevant (users without one
    are left out), ``head_*`` only the others. Used for our models and for peers alike,
    so every row of a comparison is scored by the same code.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    ks = tuple(ks or PROTOCOLS[protocol]["ks"])
    is_tail = np.asarray(prepared.is_tail if is_tail is None else is_tail, dtype=bool)
    tgt = pad_lists(targets)
    tail_tgt = _targets_where(targets, is_tail)
    head_tgt = _targets_where(targets, ~is_tail)
    per_user: dict[str, np.ndarray] = {}
    fns = {"ndcg": M.ndcg, "recall": M.recall, "hr": M.hit_rate, "mrr": M.mrr}
    for k in ks:
        for name, fn in fns.items():
            per_user[f"{name}@{k}"] = fn(top[:, :k], tgt)
        per_user[f"tail_recall@{k}"] = M.recall(top[:, :k], tail_tgt)
        per_user[f"tail_ndcg@{k}"] = M.ndcg(top[:, :k], tail_tgt)
        per_user[f"head_recall@{k}"] = M.recall(top[:, :k], head_tgt)
    scalars = {"users": float(len(targets)), "targets": float(sum(len(t) for t in targets)),
               "tail_targets": float(sum(int(is_tail[t].sum()) for t in targets if len(t))),
               "tail_users": float(sum(bool(is_tail[t].any()) for t in targets if len(t))),
               f"coverage@{max(ks)}": M.coverage(top[:, :max(ks)], prepared.n_items)}
    na = dict(PROTOCOLS[protocol]["undefined"])
    if page is not None:
        cats = np.asarray(prepared.item_categories, dtype=np.int64)
        K = page.shape[1]
        for k in sorted({k for k in (10, 20) if k <= K} | {K}):
            per_user[f"page_recall@{k}"] = M.recall(page[:, :k], tgt)
            per_user[f"page_ndcg@{k}"] = M.ndcg(page[:, :k], tgt)
            per_user[f"tail_page_recall@{k}"] = M.recall(page[:, :k], tail_tgt)
        per_user["page_ild"] = M.ild(page, item_categories=cats)
        # ILD@10, the alignment target's cut (rlhf_ray.targets): the first 10 slots, so a page of 20
        # (the protocol tables) is judged at the same depth as the main job's page of 10
        per_user["page_ild@10"] = M.ild(page[:, :10], item_categories=cats)
        per_user["page_cat_entropy"] = M.category_entropy(page, cats)
        per_user["page_cat_coverage"] = M.category_coverage(page, cats)
        per_user["page_redundancy"] = M.redundancy(page, cats)
        scalars["page_coverage"] = M.coverage(page, prepared.n_items)
        if "page_was" not in na:
            rated = [dict(zip(t, r)) for t, r in zip(targets, target_ratings)]
            page_r = np.array([[d.get(int(i), np.nan) for i in row] for d, row in zip(rated, page)], dtype=float)
            ideal = pad_lists([sorted(r, reverse=True) for r in target_ratings], fill=np.nan, dtype=float)
            per_user["page_was"] = M.was(page, page_r, ideal)
            per_user["page_pwkt"] = M.pwkt(page_r)
    else:
        na.update({k: "n/a: no generated page (ranking only)" for k in ("page_ild", "page_ild@10", "page_was",
                                                                         "page_pwkt")})
    for name, v in list(per_user.items()):
        if not np.any(~np.isnan(v)):
            del per_user[name]
            na.setdefault(name, "n/a: undefined for every evaluated user (e.g. no user with a tail target)")
    for name in [n for n in per_user if n in na]:
        del per_user[name]
    return Scored(per_user, scalars, na)


class Evaluation(NamedTuple):
    metrics: dict  # name -> float mean over users (defined metrics only) + counts
    per_user: pd.DataFrame  # one row per user: user_idx, targets, ranking, page, and every per-user metric
    na: dict  # name -> reason for each metric that is undefined here ("n/a")
    protocol: str


def evaluate_full(model, vocab: Vocab, prepared, split: str = "test", gen: GenerationConfig | None = None,
                  ks=None, max_users: int = 0, batch_size: int = 256, pages: bool = True, prefix: str = "",
                  protocol: str | None = None) -> Evaluation:
    """Rank and generate for every user of ``split``, then :func:`score_lists` under the protocol.

    Prompts are :func:`rlhf_ray.generation.build_prompts` of each user's history and user (the
    user token when the vocabulary has them): validation and test build them alike.

    ``protocol`` defaults to the one the data's split defines (:func:`protocol_of`);
    ``ks`` to the protocol's cut-offs (loo: 10, 20; pagellm: 10, 20, 40, 100).
    """
    gen = gen or GenerationConfig()
    protocol = protocol or protocol_of(prepared)
    ks = tuple(ks or PROTOCOLS[protocol]["ks"])
    hist, targets, target_ratings, users = prepared.histories(split)
    if max_users and len(hist) > max_users:
        hist, targets, target_ratings, users = hist[:max_users], targets[:max_users], target_ratings[:max_users], users[:max_users]
    if not len(hist):
        raise ValueError(f"split {split!r} has no users with a positive target")
    top, page = rank_and_generate(model, vocab, hist, replace(gen), max(ks), batch_size, pages, users)
    scored = score_lists(top, page, targets, target_ratings, prepared, protocol, ks)
    metrics = {k: M.mean(v) for k, v in scored.per_user.items()}
    metrics.update(scored.scalars)
    frame = pd.DataFrame({
        "user_idx": np.asarray(users, dtype=np.int64),
        "targets": [list(map(int, t)) for t in targets],
        "ranking": [list(map(int, r)) for r in top],
    })
    if page is not None:
        frame["page"] = [list(map(int, r)) for r in page]
    for k, v in scored.per_user.items():
        frame[k] = v
    return Evaluation({f"{prefix}{k}": float(v) for k, v in metrics.items()}, frame,
                      {f"{prefix}{k}": r for k, r in scored.na.items()}, protocol)


def evaluate(model, vocab: Vocab, prepared, split: str = "test", gen: GenerationConfig | None = None,
             ks=(10, 20), max_users: int = 0, batch_size: int = 256, pages: bool = True, prefix: str = ""):
    """(metrics dict of floats, per-user predictions DataFrame) for ``split`` ("valid" or "test").

    The float dict holds only metrics defined under the data's protocol; use
    :func:`evaluate_full` for the "n/a" reasons and per-user values.
    """
    ev = evaluate_full(model, vocab, prepared, split, gen, ks, max_users, batch_size, pages, prefix)
    return ev.metrics, ev.per_user
