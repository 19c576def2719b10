"""Preference pairs for the reward model, synthesised from implicit feedback (PageLLM).

Training data only. For a user with chronological training items x_0 .. x_{n-1}
(n = valid_start) and ratings y_i, a *cut* t (min_history <= t < n) gives

    prompt history  H = x_0 .. x_{t-1}
    window          W = x_t .. x_{t+w-1}     (w = ``window``, clipped at n; 0 = up to n)
    positives       P = {x_i in W : y_i > positive_threshold}

and is admissible when |P| >= ``min_page``. Each user gets up to ``cuts_per_user``
admissible cuts: the latest one whose window fills a whole page, then random ones
(whole-page windows first).

**Golden (chosen) page** G, K = ``page_size``: the ground-truth page of
:mod:`rlhf_ray.data.pages` (P by rating, then recency, at most ``max_per_category`` per
category while the positives allow it), the one definition SFT and evaluation share.

**Rejected pages**, one per family and golden page (a family that cannot make a
strictly worse page, e.g. a ranking swap of equally rated items, is skipped). With
s = ``strength`` and U = items the user has in the training part (never placed on a
rejected page unless the family says so):

* ``relevance``:  round(s K) random slots get unseen negatives not in U, uniform or
  ~ training popularity (``negatives``).
* ``ranking``:    the same item set; slot i swaps with slot K-1-i for
  i < ceil(s K / 2) where y_i > y_{K-1-i}: high-rated items move down.
* ``diversity``:  ceil(s m) of the m items outside the page's ``collapse_categories``
  dominant categories become items of a dominant category: the user's other window
  positives first, then popular unseen items. Moving an item from a category to
  one at least as large strictly lowers the page's category entropy.
* ``redundancy``: ceil(s K / 2) slots below the top get a near-duplicate of an item
  ranked above them: the same-category item closest in co-occurrence (the
  "embedding" of an item is its set of training users, cosine similarity; no
  pretrained embeddings exist) not in U, or, for a ``repeat_fraction`` share, the
  item itself repeated.

Users are split by user (``valid_users``, ``test_users`` shares) so held-out pairs
never share a user with training pairs. Everything is drawn from
``default_rng([seed, user_idx])``: the same data, config and seed give the same pairs.

numpy / pandas / pyarrow only.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from rlhf_ray.config import PairsConfig
from rlhf_ray.data.pages import golden_page  # noqa: F401  (the one definition; re-exported)
from rlhf_ray.errors import DataError

FORMAT_VERSION = 1
META_KEY = b"rlhf_ray.pairs"
SPLITS = ("train", "valid", "test")
LIST_COLUMNS = ("history", "chosen", "rejected", "chosen_ratings", "rejected_ratings")
COLUMNS = ("user_idx", "split", "cut", "family", *LIST_COLUMNS)


# --------------------------------------------------------------------------- item neighbourhoods


class CoOccurrence:
    """Item similarity from training co-occurrence (item vector = its set of training users).

    sim(i, j) = n_ij / sqrt(n_i n_j),  n_ij = users with both i and j in their training part.
    A row is kept sparse (the items that co-occur with i, and their similarities), computed on
    demand from the sequences of i's users and cached for the ``cache_rows`` most recently used
    items, so memory grows with the histories, never with items x items.
    """

    def __init__(self, user_items: Sequence[np.ndarray], n_items: int, cache_rows: int = 4096):
        self.user_items = [np.asarray(x, dtype=np.int64) for x in user_items]
        self.n_items = n_items
        flat = np.concatenate(self.user_items) if self.user_items else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(len(self.user_items)), [len(x) for x in self.user_items])
        order = np.argsort(flat, kind="stable")
        self.count = np.bincount(flat, minlength=n_items)  # (n_items,) n_i
        self.item_users = np.split(owner[order], np.cumsum(self.count)[:-1])  # item -> its users
        self.cache_rows = cache_rows
        self._rows: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def neighbours(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(items j with n_ij > 0 in increasing order, their similarity to i)."""
        if i in self._rows:
            self._rows.move_to_end(i)
            return self._rows[i]
        users = self.item_users[i]
        both = np.concatenate([self.user_items[u] for u in users]) if len(users) else np.zeros(0, np.int64)
        items, co = np.unique(both, return_counts=True)  # n_ij > 0 only
        sim = co.astype(np.float64) / np.sqrt(max(self.count[i], 1) * np.maximum(self.count[items], 1))
        self._rows[i] = (items, sim)
        if len(self._rows) > self.cache_rows:
            self._rows.popitem(last=False)
        return items, sim

    def row(self, i: int) -> np.ndarray:
        """(n_items,) cosine similarity of item i to every item (0 without co-occurrence)."""
        items, sim = self.neighbours(i)
        out = np.zeros(self.n_items, dtype=np.float64)
        out[items] = sim
        return out

    def nearest(self, i: int, allowed: np.ndarray) -> int | None:
        """The most similar item among ``allowed`` (n_items,) bool; ties -> more popular, then lower id.

        Any co-occurring item (sim >= 1 / n_users) beats every other one, which ties at sim 0
        and so falls to the most popular allowed item; only the co-occurring ones are scored."""
        if not allowed.any():
            return None
        items, sim = self.neighbours(i)
        ok = allowed[items]
        if ok.any():
            cand = items[ok]
            return int(cand[np.argmax(sim[ok] + 1e-9 * self.count[cand] / max(1, self.count.max()))])
        return int(np.argmax(np.where(allowed, self.count, -1)))


class Catalogue:
    """What the perturbations need to know about items: categories, popularity, neighbours."""

    def __init__(self, categories: np.ndarray, popularity: np.ndarray, cooc: CoOccurrence):
        self.categories = np.asarray(categories, dtype=np.int64)  # (n_items,) category code
        self.weights = np.asarray(popularity, dtype=np.float64) + 1.0  # (n_items,) > 0
        self.cooc = cooc
        self.all_items = np.arange(len(self.categories), dtype=np.int64)

    @property
    def n_items(self) -> int:
        return len(self.categories)

    def sample_unseen(self, rng: np.random.Generator, n: int, exclude: set[int], *, popular: bool,
                      categories: Sequence[int] | None = None) -> list[int]:
        """Up to ``n`` distinct items not in ``exclude`` (optionally of ``categories``),
        uniform or ~ popularity, without replacement."""
        if n <= 0:
            return []
        ok = np.ones(self.n_items, dtype=bool)
        if exclude:
            ok[np.fromiter(exclude, dtype=np.int64, count=len(exclude))] = False
        if categories is not None:
            ok &= np.isin(self.categories, np.asarray(list(categories), dtype=np.int64))
        pool = self.all_items[ok]
        if len(pool) == 0:
            return []
        p = self.weights[ok] / self.weights[ok].sum() if popular else None
        return rng.choice(pool, size=min(n, len(pool)), replace=False, p=p).tolist()


# --------------------------------------------------------------------------- rejected pages


def _share(strength: float, n: int) -> int:
    """ceil(strength * n), at least 1 and at most n."""
    return min(n, max(1, math.ceil(strength * n - 1e-9)))


def relevance_page(page: list[int], rng: np.random.Generator, cat: Catalogue, seen: set[int],
                   strength: float, negatives: str) -> list[int] | None:
    """round(s K) random slots replaced by unseen negatives (uniform, popular or a 50/50 mix)."""
    K = len(page)
    n = min(K, max(1, int(strength * K + 0.5)))
    slots = np.sort(rng.choice(K, size=n, replace=False))
    n_pop = n if negatives == "popular" else 0 if negatives == "random" else int(rng.binomial(n, 0.5))
    exclude = seen | set(page)
    negs = cat.sample_unseen(rng, n_pop, exclude, popular=True)
    negs += cat.sample_unseen(rng, n - len(negs), exclude | set(negs), popular=False)
    if not negs:
        return None
    rng.shuffle(negs)
    out = list(page)
    for s, x in zip(slots, negs):
        out[int(s)] = int(x)
    return out


def ranking_page(page: list[int], ratings: Sequence[float], strength: float) -> list[int] | None:
    """Swap slot i with slot K-1-i for i < ceil(s K / 2) where rating_i > rating_{K-1-i}."""
    K = len(page)
    m = min(K // 2, max(1, math.ceil(strength * K / 2 - 1e-9)))
    out, swapped = list(page), 0
    for i in range(m):
        j = K - 1 - i
        if ratings[i] > ratings[j]:
            out[i], out[j] = out[j], out[i]
            swapped += 1
    return out if swapped else None


def diversity_page(page: list[int], rng: np.random.Generator, cat: Catalogue, seen: set[int],
                   strength: float, keep: int, known: Sequence[int]) -> list[int] | None:
    """Collapse onto the ``keep`` dominant categories: ceil(s m) of the m off-category items
    become dominant-category items (``known`` = the user's other positives first, in order)."""
    cats = cat.categories[np.asarray(page)]
    counts = Counter(int(c) for c in cats)
    first = {int(c): k for k, c in reversed(list(enumerate(cats)))}
    dominant = sorted(counts, key=lambda c: (-counts[c], first[c]))[:keep]
    off = [k for k, c in enumerate(cats) if int(c) not in dominant]
    if not off:
        return None
    n = _share(strength, len(off))
    slots = np.sort(rng.choice(np.asarray(off), size=n, replace=False))
    on_page = set(page)
    fills = [int(x) for x in known if int(cat.categories[x]) in dominant and x not in on_page][:n]
    fills += cat.sample_unseen(rng, n - len(fills), seen | on_page | set(fills), popular=True, categories=dominant)
    if not fills:
        return None
    out = list(page)
    for s, x in zip(slots, fills):
        out[int(s)] = int(x)
    return out


def redundancy_page(page: list[int], rng: np.random.Generator, cat: Catalogue, seen: set[int],
                    strength: float, repeat_fraction: float) -> list[int] | None:
    """ceil(s K / 2) slots below the top get a near-duplicate (or repeat) of an item above them."""
    K = len(page)
    if K < 2:
        return None
    n = min(K - 1, max(1, math.ceil(strength * K / 2 - 1e-9)))
    slots = sorted(int(s) for s in rng.choice(np.arange(1, K), size=n, replace=False))
    replaced = set(slots)
    out, used = list(page), set(page) | seen
    for s in slots:
        sources = [page[k] for k in range(s) if k not in replaced]  # slot 0 is never replaced
        src = int(sources[int(rng.integers(len(sources)))])
        dup = src
        if rng.random() >= repeat_fraction:
            allowed = cat.categories == cat.categories[src]
            allowed[np.fromiter(used, dtype=np.int64, count=len(used))] = False
            near = cat.cooc.nearest(src, allowed)
            dup = src if near is None else near
        out[s] = dup
        used.add(dup)
    return out


# --------------------------------------------------------------------------- per user


def admissible_cuts(ratings: np.ndarray, threshold: float, cfg: PairsConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cuts t in [min_history, n) whose window holds >= min_page positives, and whether
    each one's window fills a whole page (>= page_size positives)."""
    n = len(ratings)
    if n <= cfg.min_history:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    csum = np.concatenate([[0], np.cumsum(ratings > threshold)])  # (n+1,) positives before i
    t = np.arange(cfg.min_history, n)
    end = np.full_like(t, n) if cfg.window == 0 else np.minimum(n, t + cfg.window)
    n_pos = csum[end] - csum[t]
    ok = n_pos >= cfg.min_page
    return t[ok], n_pos[ok] >= cfg.page_size


def choose_cuts(cuts: np.ndarray, full: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` cuts: the latest full-page cut (else the latest cut), then random full-page
    cuts, then random partial ones; sorted."""
    if len(cuts) <= n:
        return cuts
    first = cuts[full][-1] if full.any() else cuts[-1]
    rest = [c for c in (cuts[full], cuts[~full]) if len(c)]
    picked = [first]
    for group in rest:
        group = group[group != first]
        k = min(n - len(picked), len(group))
        if k > 0:
            picked += rng.choice(group, size=k, replace=False).tolist()
    return np.sort(np.asarray(picked, dtype=np.int64))


def user_pairs(user_idx: int, items: np.ndarray, ratings: np.ndarray, threshold: float, cfg: PairsConfig,
               cat: Catalogue, rng: np.random.Generator) -> list[dict]:
    """All pairs of one user from the training part ``items``, ``ratings`` (see module docstring)."""
    cuts, full = admissible_cuts(ratings, threshold, cfg)
    if len(cuts) == 0:
        return []
    cuts = choose_cuts(cuts, full, cfg.cuts_per_user, rng)
    seen = set(items.tolist())
    rows = []
    for t in cuts.tolist():
        end = len(items) if cfg.window == 0 else min(len(items), t + cfg.window)
        pos = t + np.flatnonzero(ratings[t:end] > threshold)  # (P,) positions of window positives
        sel = pos[golden_page(items[pos], ratings[pos], cat.categories[items[pos]], cfg.page_size,
                              cfg.max_per_category)]
        chosen, chosen_r = items[sel].tolist(), ratings[sel].tolist()
        known_rating = dict(zip(items[t:].tolist(), ratings[t:].tolist()))
        others = [int(items[p]) for p in sorted(set(pos.tolist()) - set(sel.tolist()),
                                                key=lambda p: (-float(ratings[p]), p))]
        makers: dict[str, Callable[[], list[int] | None]] = {
            "relevance": lambda: relevance_page(chosen, rng, cat, seen, cfg.strength, cfg.negatives),
            "ranking": lambda: ranking_page(chosen, chosen_r, cfg.strength),
            "diversity": lambda: diversity_page(chosen, rng, cat, seen, cfg.strength, cfg.collapse_categories,
                                                others),
            "redundancy": lambda: redundancy_page(chosen, rng, cat, seen, cfg.strength, cfg.repeat_fraction),
        }
        history = items[:t].tolist()
        for family in cfg.families:
            rejected = makers[family]()
            if rejected is None or rejected == chosen:
                continue
            rows.append({
                "user_idx": user_idx, "cut": t, "family": family, "history": history,
                "chosen": chosen, "rejected": rejected, "chosen_ratings": chosen_r,
                "rejected_ratings": [known_rating.get(x, float("nan")) for x in rejected],
            })
    return rows


# --------------------------------------------------------------------------- whole data set


def split_users(user_ids: np.ndarray, cfg: PairsConfig) -> dict[int, str]:
    """user_idx -> "train" | "valid" | "test", a seeded permutation cut by the configured shares."""
    perm = np.random.default_rng([cfg.seed, 7]).permutation(np.asarray(user_ids, dtype=np.int64))
    n = len(perm)
    n_test = int(round(cfg.test_users * n))
    n_valid = max(1, int(round(cfg.valid_users * n)))
    out = {int(u): "train" for u in perm}
    out.update({int(u): "test" for u in perm[:n_test]})
    out.update({int(u): "valid" for u in perm[n_test: n_test + n_valid]})
    return out


def catalogue(prepared) -> Catalogue:
    s = prepared.sequences
    user_items = [np.asarray(it[:vs], dtype=np.int64) for it, vs in zip(s["items"], s["valid_start"])]
    return Catalogue(prepared.item_categories, prepared.popularity, CoOccurrence(user_items, prepared.n_items))


def training_timeline(items, ratings, valid_start: int) -> tuple[np.ndarray, np.ndarray]:
    """A user's training part ``(items, ratings)`` in time order, each item once (its first
    interaction; defensive: prepared data has one interaction per item)."""
    its, first = np.unique(np.asarray(items[:valid_start], dtype=np.int64), return_index=True)
    return its[np.argsort(first)], np.asarray(ratings[:valid_start], dtype=np.float64)[np.sort(first)]


def build_pairs(prepared, cfg: PairsConfig) -> pd.DataFrame:
    """The pair set of a prepared directory (columns: :data:`COLUMNS`), rows by user then cut."""
    cat = catalogue(prepared)
    thr = prepared.positive_threshold
    s = prepared.sequences
    splits = split_users(s["user_idx"].to_numpy(), cfg)
    rows: list[dict] = []
    for u, items, ratings, vs in zip(s["user_idx"], s["items"], s["ratings"], s["valid_start"]):
        rng = np.random.default_rng([cfg.seed, int(u)])
        rows += user_pairs(int(u), *training_timeline(items, ratings, vs), thr, cfg, cat, rng)
    if not rows:
        raise DataError(f"{prepared.path}: no preference pairs: no user has {cfg.min_page} positives within "
                        f"{cfg.window or 'all'} training items after {cfg.min_history} history items "
                        f"(lower pairs.min_page / min_history or raise window)")
    df = pd.DataFrame(rows)
    df.insert(1, "split", [splits[int(u)] for u in df["user_idx"]])
    return df[list(COLUMNS)]


# --------------------------------------------------------------------------- files


def pairs_digest(df: pd.DataFrame) -> str:
    """sha256 over the pair set's content (column order of :data:`COLUMNS`)."""
    h = hashlib.sha256()
    for col in COLUMNS:
        values = df[col]
        if col in LIST_COLUMNS:
            lens = np.asarray([len(x) for x in values], dtype=np.int64)
            flat = np.concatenate([np.asarray(x, dtype=np.float64) for x in values]) if len(values) else []
            h.update(lens.tobytes())
            h.update(np.asarray(flat, dtype=np.float64).tobytes())
        elif values.dtype == object or isinstance(values.dtype, pd.StringDtype):
            h.update("\n".join(map(str, values)).encode())
        else:
            h.update(np.asarray(values, dtype=np.int64).tobytes())
    return h.hexdigest()


def summary(df: pd.DataFrame) -> dict:
    """{"pairs": N, "users": U, "by_split": {split: n}, "by_family": {family: n}}."""
    return {
        "pairs": int(len(df)),
        "users": int(df["user_idx"].nunique()),
        "by_split": {k: int(v) for k, v in df["split"].value_counts().sort_index().items()},
        "by_family": {k: int(v) for k, v in df["family"].value_counts().sort_index().items()},
    }


def pairs_meta(df: pd.DataFrame, prepared, cfg: PairsConfig) -> dict:
    """What makes a pair set reproducible: config (seed included), data fingerprint, digest."""
    return {"format": FORMAT_VERSION, "config": cfg.to_dict(), "seed": cfg.seed,
            "data_fingerprint": prepared.stats.get("fingerprint", ""), "digest": pairs_digest(df),
            **summary(df)}


def save_pairs(df: pd.DataFrame, path: str | Path, meta: dict) -> Path:
    """Write ``df`` as Parquet with ``meta`` (JSON) in the schema metadata, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df[list(COLUMNS)], preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return out


def load_pairs(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a pair file written by :func:`save_pairs`: ``(frame with list cells, meta)``."""
    import pyarrow.parquet as pq

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: pair file not found (write one with `rlhf-ray pairs --data DIR --out {p}`)")
    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        raise DataError(f"{p}: not a readable Parquet file ({e})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if raw is None or missing:
        raise DataError(f"{p}: not a rlhf-ray pair file (missing {missing or 'its metadata'})")
    df = table.to_pandas()
    for col in LIST_COLUMNS:
        df[col] = [list(x) for x in df[col]]
    for col in ("history", "chosen", "rejected"):
        df[col] = [[int(v) for v in x] for x in df[col]]
    return df[list(COLUMNS)], json.loads(raw)
