"""Offline metrics for recommendation pages: ranking accuracy, rating quality, diversity.

Pure, vectorised numpy (no torch, Ray or pandas), so they test alone and run in any
actor. Conventions shared by every function:

* Item ids are non-negative ints (``item_idx`` 0..n_items-1). Ragged per-user lists
  (targets, pages) are passed as 2-D int arrays right-padded with ``-1``; padding
  never matches anything. Ids below -1 are rejected.
* Per-user metrics return float arrays of shape (B,) so callers can split users by
  group (:func:`by_group`) before averaging with :func:`mean`. Where a metric is
  undefined for a user (no relevant items, an ideal page worth 0, no comparable
  pair) the value is NaN, and :func:`mean` skips NaN: such users are left out of
  the average rather than counted as 0.
* Positions and ranks are 1-based in the formulas; the position discount is the
  DCG one, ``d(i) = 1 / log2(i + 1)``.
* Every metric declares its direction in :data:`DIRECTION` ("max" = higher is better,
  "min" = lower is better); :func:`direction` reads it for any report key
  (``"tail_page_recall@20"``, ``"val/ndcg@10"``), so callers never set a mode by hand.
  All are higher-is-better except :func:`redundancy` (PageLLM's Entropy direction).
* Torch tensors are accepted (``.detach().cpu()`` then ``np.asarray``; torch is not
  imported here).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

PAD = -1  # padding id in ragged 2-D id arrays

RANKING_METRICS = ("ndcg", "recall", "hr", "mrr")


# --------------------------------------------------------------------------- input checks


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch.Tensor, possibly on GPU
        x = x.detach().cpu()
    return np.asarray(x)


def _ids(x: Any, name: str, ndim: int = 2, what: str = "(B, K)") -> np.ndarray:
    """An integer id array of rank ``ndim``; -1 is padding, anything lower is an error."""
    a = _np(x)
    if a.ndim != ndim or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f"{name}: expected a {ndim}-D {what} integer array (-1 = padding), "
            f"got shape {a.shape} dtype {a.dtype}")
    if a.size and a.min() < PAD:
        raise ValueError(f"{name}: ids must be >= 0 or {PAD} (padding), got {a.min()} in shape {a.shape}")
    return a.astype(np.int64, copy=False)


def _floats(x: Any, name: str, ndim: int, what: str) -> np.ndarray:
    a = _np(x)
    if a.ndim != ndim or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name}: expected a {ndim}-D {what} numeric array, got shape {a.shape} dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def _same_rows(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{b_name}: expected {a.shape[0]} rows like {a_name} {a.shape}, got shape {b.shape}")


def _in_table(pages: np.ndarray, n: int, table: str) -> None:
    if pages.size and pages.max() >= n:
        raise ValueError(f"pages: item id {pages.max()} out of range for {table} with {n} items "
                         f"(pages shape {pages.shape})")


def _discount(k: int) -> np.ndarray:
    """(k,) d(i) = 1 / log2(i + 1) for positions i = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _pos_int(k: Any, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------- top-k


def topk_from_scores(scores: Any, k: int, exclude: Any = None) -> np.ndarray:
    """(B, k) int64 indices of the k highest scores per row, best first.

    ``exclude`` (B, N) bool marks entries that are never chosen (already seen items);
    ties are broken by the lower index (a stable sort). If k > N, k = N. A row with
    fewer than k allowed entries is right-padded with -1. NaN scores are an error.
    Uses a partition (O(N)) then sorts only the k winners.
    """
    s = _floats(scores, "scores", 2, "(B, N)")
    k = _pos_int(k, "k")
    if np.isnan(s).any():
        raise ValueError(f"scores: contains NaN (shape {s.shape})")
    B, N = s.shape
    key = -s  # ascending key = descending score
    if exclude is not None:
        ex = _np(exclude)
        if ex.dtype != np.bool_ or ex.shape != s.shape:
            raise ValueError(f"exclude: expected a (B, N) = {s.shape} bool array, got shape {ex.shape} dtype {ex.dtype}")
        key = np.where(ex, np.nan, key)  # NaN sorts after every number, -inf scores included
    k = min(k, N)
    if N == 0:
        return np.zeros((B, 0), np.int64)
    # Pick the winners: everything strictly better than the k-th key, then the lowest
    # indices among those tied with it, so exactly k per row, ties resolved stably.
    kth = np.partition(key, k - 1, axis=1)[:, k - 1:k]  # (B, 1)
    kth_nan, key_nan = np.isnan(kth), np.isnan(key)
    better = (key < kth) | (kth_nan & ~key_nan)
    tied = (key == kth) | (kth_nan & key_nan)
    keep = better | (tied & (np.cumsum(tied, axis=1) <= k - better.sum(axis=1, keepdims=True)))
    chosen = np.nonzero(keep)[1].reshape(B, k)  # (B, k) ascending index
    order = np.argsort(np.take_along_axis(key, chosen, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(chosen, order, axis=1)
    if exclude is not None:
        top = np.where(np.take_along_axis(ex, top, axis=1), PAD, top)
    return top.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- ranking accuracy


def _hits(topk: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """hits (B, K) bool: position i holds a target not already at an earlier position;
    n_targets (B,) int: number of distinct targets per user."""
    top = _ids(topk, "topk", 2, "(B, K)")
    tgt = _ids(targets, "targets", 2, "(B, T)")
    _same_rows(top, "topk", tgt, "targets")
    B, K = top.shape
    if K == 0:
        raise ValueError(f"topk: expected at least one column, got shape {top.shape}")
    # Row-wise membership with one searchsorted: shift row b by b * span so the
    # flattened sorted targets are globally sorted; +1 maps padding -1 to 0.
    tgt_sorted = np.sort(tgt, axis=1)  # (B, T)
    span = int(max(top.max(initial=0), tgt.max(initial=0))) + 2
    offset = np.arange(B, dtype=np.int64)[:, None] * span  # (B, 1)
    flat = (tgt_sorted + 1 + offset).ravel()  # (B*T,)
    query = top + 1 + offset  # (B, K)
    pos = np.minimum(np.searchsorted(flat, query), max(flat.size - 1, 0))
    hits = (flat[pos] == query) & (top >= 0) if flat.size else np.zeros_like(top, bool)
    earlier = np.tri(K, K, -1, dtype=bool)  # earlier[i, j] = j < i
    repeated = ((top[:, :, None] == top[:, None, :]) & earlier).any(axis=2)  # (B, K)
    hits &= ~repeated
    first = np.ones_like(tgt_sorted, bool)
    first[:, 1:] = tgt_sorted[:, 1:] != tgt_sorted[:, :-1]
    n_targets = (first & (tgt_sorted >= 0)).sum(axis=1)
    return hits, n_targets


def _nan_where_no_targets(values: np.ndarray, n_targets: np.ndarray) -> np.ndarray:
    return np.where(n_targets > 0, values, np.nan)


def _hit_rate(hits: np.ndarray, n: np.ndarray) -> np.ndarray:
    return _nan_where_no_targets(hits.any(axis=1).astype(np.float64), n)


def _recall(hits: np.ndarray, n: np.ndarray) -> np.ndarray:
    return _nan_where_no_targets(hits.sum(axis=1) / np.maximum(n, 1), n)


def _ndcg(hits: np.ndarray, n: np.ndarray) -> np.ndarray:
    K = hits.shape[1]
    d = _discount(K)
    dcg = hits @ d  # (B,)
    idcg = np.concatenate([[0.0], np.cumsum(d)])[np.minimum(n, K)]  # (B,) ideal: first min(|T|, K) slots hit
    return _nan_where_no_targets(dcg / np.where(idcg > 0, idcg, 1.0), n)


def _mrr(hits: np.ndarray, n: np.ndarray) -> np.ndarray:
    any_hit = hits.any(axis=1)
    first_rank = hits.argmax(axis=1) + 1  # (B,) 1-based rank of the first hit
    return _nan_where_no_targets(np.where(any_hit, 1.0 / first_rank, 0.0), n)


_RANKING_FNS = {"ndcg": _ndcg, "recall": _recall, "hr": _hit_rate, "mrr": _mrr}


def hit_rate(topk: Any, targets: Any) -> np.ndarray:
    """(B,) HR@K = 1[topk ∩ targets ≠ ∅]. Higher is better.

    ``topk`` (B, K) item ids, ``targets`` (B, T) relevant ids padded with -1.
    NaN for users with no targets (left out of :func:`mean`).
    """
    return _hit_rate(*_hits(topk, targets))


def recall(topk: Any, targets: Any) -> np.ndarray:
    """(B,) Recall@K = |topk ∩ targets| / |targets|. Higher is better.

    Sets of distinct ids (a repeated id counts once). With |targets| > K the best
    possible value is K / |targets|. NaN for users with no targets.
    """
    return _recall(*_hits(topk, targets))


def ndcg(topk: Any, targets: Any) -> np.ndarray:
    """(B,) NDCG@K with binary relevance. Higher is better.

    DCG = sum_{i <= K, topk_i in targets} 1 / log2(i + 1) (i 1-based, a repeated
    id counts at its first position only); IDCG = sum_{i=1}^{min(|targets|, K)}
    1 / log2(i + 1); NDCG = DCG / IDCG in [0, 1]. NaN for users with no targets.
    """
    return _ndcg(*_hits(topk, targets))


def mrr(topk: Any, targets: Any) -> np.ndarray:
    """(B,) MRR@K = 1 / rank of the first target in topk (1-based), 0 if none in K.

    Higher is better. NaN for users with no targets.
    """
    return _mrr(*_hits(topk, targets))


# --------------------------------------------------------------------------- rating quality of a page


def was(pages: Any, true_ratings: Any, ideal_ratings: Any) -> np.ndarray:
    """(B,) Weighted Average Score of a page against the user's ideal page. Higher is better.

    WAS = sum_{i=1}^{K} d(i) r_i / sum_{i=1}^{min(K, M)} d(i) r*_i,  d(i) = 1 / log2(i + 1)

    r_i: true rating of the item at position i (``true_ratings`` (B, K); NaN = unknown,
    and a -1 padded position of ``pages`` (B, K), both count 0). r*_i: the user's known
    ratings (``ideal_ratings`` (B, M), NaN-padded) sorted descending, i.e. the best
    page the user's known ratings allow. Ratings must be >= 0. In [0, 1] when the
    page's known ratings are among the user's known ratings (= 1 for the ideal page);
    NaN where the ideal is empty or worth 0.
    """
    pg = _ids(pages, "pages", 2, "(B, K)")
    r = _floats(true_ratings, "true_ratings", 2, "(B, K)")
    ideal = _floats(ideal_ratings, "ideal_ratings", 2, "(B, M)")
    if r.shape != pg.shape:
        raise ValueError(f"true_ratings: expected shape {pg.shape} like pages, got shape {r.shape}")
    _same_rows(pg, "pages", ideal, "ideal_ratings")
    for name, a in (("true_ratings", r), ("ideal_ratings", ideal)):
        if (a < 0).any():
            raise ValueError(f"{name}: ratings must be >= 0, got {np.nanmin(a)} in shape {a.shape}")
    K = pg.shape[1]
    d = _discount(K)
    gain = np.where((pg >= 0) & ~np.isnan(r), r, 0.0)  # (B, K)
    best = np.nan_to_num(-np.sort(-ideal, axis=1)[:, :K], nan=0.0)  # (B, min(K, M)) descending, NaN last
    num = gain @ d
    den = best @ d[:best.shape[1]]
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def pwkt(pages_ratings: Any) -> np.ndarray:
    """(B,) Position-Weighted Kendall tau of the page order against the true ratings.

    Higher is better; 1 = page sorted by true rating (best first), -1 = reversed.
    Over position pairs i < j (1-based) whose ratings are both known and differ:

        PWKT = sum_{i<j} w_ij sign(r_i - r_j) / sum_{i<j} w_ij,
        w_ij = 1 / log2(i + 1) + 1 / log2(j + 1)

    so a pair near the top weighs more. Pairs with a tie in rating or an unknown
    (NaN) rating are left out of both sums. In [-1, 1]; NaN where no pair counts.
    ``pages_ratings`` (B, K): true rating of the item at each position.
    """
    r = _floats(pages_ratings, "pages_ratings", 2, "(B, K)")
    K = r.shape[1]
    d = _discount(K)
    w = (d[:, None] + d[None, :]) * np.triu(np.ones((K, K)), 1)  # (K, K) w_ij for i < j, else 0
    with np.errstate(invalid="ignore"):
        sign = np.nan_to_num(np.sign(r[:, :, None] - r[:, None, :]), nan=0.0)  # (B, K, K)
    num = (sign * w).sum(axis=(1, 2))
    den = (np.abs(sign) * w).sum(axis=(1, 2))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# --------------------------------------------------------------------------- diversity and coverage


def _page_categories(pages: Any, item_categories: Any) -> tuple[np.ndarray, np.ndarray]:
    """categories (B, K) of the page's items (arbitrary at padding) and valid (B, K) mask."""
    pg = _ids(pages, "pages", 2, "(B, K)")
    cats = _np(item_categories)
    if cats.ndim != 1:
        raise ValueError(f"item_categories: expected a 1-D (N,) array, got shape {cats.shape}")
    _in_table(pg, cats.shape[0], "item_categories")
    valid = pg >= 0
    return cats[np.where(valid, pg, 0)], valid


def ild(pages: Any, item_categories: Any = None, item_embeddings: Any = None) -> np.ndarray:
    """(B,) Intra-list diversity: mean distance over unordered pairs of valid positions.

    ILD = (1 / |P|) sum_{(i, j) in P} dist(item_i, item_j),  P = {i < j, both not -1}

    dist = 1[category_i != category_j] with ``item_categories`` (N,), or cosine
    distance 1 - cos(e_i, e_j) with ``item_embeddings`` (N, D) (a zero vector has
    cos 0 with everything). Give exactly one. Higher = more diverse. NaN for pages
    with fewer than 2 valid items.
    """
    if (item_categories is None) == (item_embeddings is None):
        raise ValueError("item_categories / item_embeddings: give exactly one, got "
                         f"{'both' if item_categories is not None else 'neither'}")
    if item_categories is not None:
        c, valid = _page_categories(pages, item_categories)
        dist = (c[:, :, None] != c[:, None, :]).astype(np.float64)  # (B, K, K)
    else:
        pg = _ids(pages, "pages", 2, "(B, K)")
        emb = _floats(item_embeddings, "item_embeddings", 2, "(N, D)")
        _in_table(pg, emb.shape[0], "item_embeddings")
        valid = pg >= 0
        e = emb[np.where(valid, pg, 0)]  # (B, K, D)
        norm = np.linalg.norm(e, axis=2, keepdims=True)
        e = e / np.where(norm > 0, norm, 1.0)
        dist = np.clip(1.0 - e @ e.transpose(0, 2, 1), 0.0, 2.0)  # (B, K, K)
    K = valid.shape[1]
    pairs = valid[:, :, None] & valid[:, None, :] & np.triu(np.ones((K, K), bool), 1)  # i < j, both valid
    n_pairs = pairs.sum(axis=(1, 2))
    return np.where(n_pairs > 0, (dist * pairs).sum(axis=(1, 2)) / np.maximum(n_pairs, 1), np.nan)


def category_entropy(pages: Any, item_categories: Any) -> np.ndarray:
    """(B,) Shannon entropy (nats) of the category distribution of a page's valid items.

    H = -sum_c p_c ln p_c, p_c = (valid items of category c) / (valid items).
    Higher = more diverse; 0 for a single-category page, ln K for K distinct
    categories. NaN for a page with no valid item.
    """
    c, valid = _page_categories(pages, item_categories)
    n = valid.sum(axis=1)  # (B,)
    # share_i = p_{c(i)}; summing (1/n) ln share_i over the n items gives sum_c p_c ln p_c
    share = ((c[:, :, None] == c[:, None, :]) & valid[:, None, :]).sum(axis=2) / np.maximum(n, 1)[:, None]
    h = -np.log(np.where(valid, share, 1.0)).sum(axis=1) / np.maximum(n, 1)  # padding adds ln 1 = 0
    return np.where(n > 0, h + 0.0, np.nan)  # + 0.0 turns -0.0 into 0.0


def redundancy(pages: Any, item_categories: Any) -> np.ndarray:
    """(B,) Category redundancy of a page (nats). LOWER is better.

    R = ln(min(n, C)) - H,  H = category entropy of the page's n valid items
    (:func:`category_entropy`), C = number of categories in the catalogue.

    Shannon's redundancy: how far the page's category distribution is from the most
    spread-out one a page of n items can have. 0 = every item in a different category
    (or as even as C allows); ln n = all items in one category. PageLLM reports an
    "Entropy" page metric where lower is better (a redundancy measure); its formula is
    not in the text we could read, so this is our definition of that direction. It is
    reported beside :func:`category_entropy` (higher = more diverse) and
    :func:`category_coverage`, never instead of them. NaN for a page with no valid item.
    """
    _, valid = _page_categories(pages, item_categories)
    n_cat = int(np.unique(_np(item_categories)).size)
    n = valid.sum(axis=1)
    h = category_entropy(pages, item_categories)
    h_max = np.log(np.maximum(np.minimum(n, n_cat), 1))
    return np.where(n > 0, np.maximum(h_max - h, 0.0), np.nan)


def category_coverage(pages: Any, item_categories: Any) -> np.ndarray:
    """(B,) Distinct categories on a page / min(n, C). Higher is better.

    n = valid items on the page, C = categories in the catalogue; 1 = no category
    repeats while another was available. NaN for a page with no valid item.
    """
    c, valid = _page_categories(pages, item_categories)
    n_cat = int(np.unique(_np(item_categories)).size)
    n = valid.sum(axis=1)
    c = np.where(valid, c, -1)
    srt = np.sort(c, axis=1)
    distinct = ((srt[:, 1:] != srt[:, :-1]) & (srt[:, 1:] >= 0)).sum(axis=1) + (srt[:, :1] >= 0).sum(axis=1)
    return np.where(n > 0, distinct / np.maximum(np.minimum(n, n_cat), 1), np.nan)


def coverage(pages: Any, n_items: int) -> float:
    """Catalogue coverage = |distinct items on any page| / n_items, in [0, 1]. Higher is better."""
    pg = _ids(pages, "pages", 2, "(B, K)")
    n_items = _pos_int(n_items, "n_items")
    _in_table(pg, n_items, "n_items")
    return float(np.unique(pg[pg >= 0]).size / n_items)


# --------------------------------------------------------------------------- directions

#: Direction of every metric by base name: "max" = higher is better, "min" = lower is better.
DIRECTION: dict[str, str] = {
    "ndcg": "max", "recall": "max", "hr": "max", "mrr": "max", "was": "max", "pwkt": "max",
    "ild": "max", "cat_entropy": "max", "cat_coverage": "max", "coverage": "max",
    "redundancy": "min",
}
_PREFIXES = ("val/", "test/", "tail_", "head_", "page_")


def direction(key: str) -> str:
    """"max" or "min" for a report key such as ``"val/tail_page_ndcg@10"`` or ``"page_redundancy"``.

    Strips a split prefix (``val/``), the group (``tail_``/``head_``), ``page_`` and the
    ``@k`` cut-off, then looks the base name up in :data:`DIRECTION`; an unknown name is
    an error naming it (a metric must declare its direction before it can be optimised).
    """
    base = key.split("@", 1)[0]
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if base.startswith(p):
                base, changed = base[len(p):], True
    if base not in DIRECTION:
        raise KeyError(f"{key!r}: no direction declared for metric {base!r} (known: {sorted(DIRECTION)})")
    return DIRECTION[base]


# --------------------------------------------------------------------------- aggregation and reports


def mean(x: Any) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) if there are none."""
    a = _np(x).astype(np.float64, copy=False).ravel()
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def by_group(values: Any, groups: Any) -> dict[str, float]:
    """{"all": mean(values), "tail": mean over groups True, "head": mean over groups False}.

    ``values`` (B,) per-user metric, ``groups`` (B,) bool (e.g. the target is a tail item).
    """
    v = _floats(values, "values", 1, "(B,)")
    g = _np(groups)
    if g.dtype != np.bool_ or g.shape != v.shape:
        raise ValueError(f"groups: expected a (B,) = {v.shape} bool array, got shape {g.shape} dtype {g.dtype}")
    return {"all": mean(v), "tail": mean(v[g]), "head": mean(v[~g])}


def ranking_report(topk: Any, targets: Any, ks: Sequence[int] = (10, 20),
                   is_tail_target: Any = None) -> dict[str, float]:
    """Mean NDCG / Recall / HR / MRR at each k in ``ks``, from the first k columns of topk.

    Keys ``"ndcg@10"``, ``"recall@10"``, ``"hr@10"``, ``"mrr@10"``, ...; with
    ``is_tail_target`` (B,) bool also ``"tail_ndcg@10"``, ``"head_ndcg@10"``, ...
    Users with no targets are left out. ``topk`` (B, Kmax) needs Kmax >= max(ks).
    """
    ks = [_pos_int(k, "ks") for k in ks]
    if not ks:
        raise ValueError("ks: expected at least one cut-off, got ()")
    hits, n = _hits(topk, targets)
    if hits.shape[1] < max(ks):
        raise ValueError(f"topk: needs at least max(ks) = {max(ks)} columns, got shape {hits.shape}")
    if is_tail_target is not None:
        tail = _np(is_tail_target)
        if tail.dtype != np.bool_ or tail.shape != n.shape:
            raise ValueError(f"is_tail_target: expected a (B,) = {n.shape} bool array, "
                             f"got shape {tail.shape} dtype {tail.dtype}")
    out: dict[str, float] = {}
    for k in ks:
        for name in RANKING_METRICS:
            values = _RANKING_FNS[name](hits[:, :k], n)
            if is_tail_target is None:
                out[f"{name}@{k}"] = mean(values)
                continue
            split = by_group(values, tail)
            out[f"{name}@{k}"] = split["all"]
            out[f"tail_{name}@{k}"] = split["tail"]
            out[f"head_{name}@{k}"] = split["head"]
    return out


def page_report(pages: Any, item_categories: Any, n_items: int) -> dict[str, float]:
    """Means of the page-quality metrics: {"ild", "cat_entropy", "cat_coverage", "redundancy",
    "coverage"} (see each function for its formula and direction)."""
    return {
        "ild": mean(ild(pages, item_categories=item_categories)),
        "cat_entropy": mean(category_entropy(pages, item_categories)),
        "cat_coverage": mean(category_coverage(pages, item_categories)),
        "redundancy": mean(redundancy(pages, item_categories)),
        "coverage": coverage(pages, n_items),
    }
