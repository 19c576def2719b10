"""Seeded synthetic interactions for tests, smoke runs and scaling benches (never the default dataset).

Generative story, all drawn from ``numpy.random.default_rng(seed)``:

* item i has a primary category c_i (30% also a second one), a popularity weight
  w_i proportional to 1 / rank_i (Zipf, exponent 1, ranks shuffled) and a quality q_i ~ N(0, 0.5);
* user u has category preferences p_u ~ Dirichlet(0.5) and n_u = min(I, max(3, Poisson(mean)))
  interactions (``mean`` is per user: the table has about users x mean rows, and a mean at or
  above the catalogue size I means every user rates every item, users x I rows);
* u picks n_u distinct items with probability proportional to w_i * (p_u[c_i] + 0.05), one
  after another without replacement, in random order, at exponentially spaced times (mean gap 1 day);
* rating = clip(round(3 + 1.5 * tanh(C * p_u[c_i] - 1) + q_i + N(0, 0.7)), 1, 5), C categories,
  so a user rates the categories they prefer higher.

How a user's items are drawn depends on the cost, not the distribution (both draw the
same law: successive sampling without replacement, proportional to the weights):

* **dense** when the catalogue is small next to the user's count (I <= ``DENSE_ITEMS_PER_DRAW`` x n_u):
  Gumbel top-k over all I items, O(I) for that user;
* **by category** otherwise: a category from the user's mixture
  m_c ~ (p_u[c] + 0.05) W_c (W_c = the category's total weight), then an item from that
  category's popularity distribution (one ``searchsorted`` on the cumulative weights),
  repeated with duplicates dropped until n_u distinct items are drawn; O(n_u log I).

So the whole generator costs O(I + interactions log I) time and memory: nothing of size
users x items (or items x items) is ever built.

Ids are "1".."N" strings, so item_idx follows the generated order.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rlhf_ray.data.schema import RawData, items_frame

CATEGORY_NAMES = ("Action", "Comedy", "Drama", "Documentary", "Horror", "Romance", "Sci-Fi",
                  "Thriller", "Animation", "Western", "Musical", "Mystery")

# Dense Gumbel top-k is used while I <= this x n_u. Measured on the 2-core box (load ~5): a dense draw
# costs about 50 ns per catalogue item, a by-category draw 45-100 us per user for n_u = 20-50 (mostly
# per-call overhead), so they meet near I = 1000-2000 items; 64 x n_u puts the switch there for
# n_u = 20-30, and every small synthetic set the tests use stays on the dense path (bit-identical
# to the generator before the by-category draw existed).
DENSE_ITEMS_PER_DRAW = 64
_MAX_ROUNDS = 64  # by-category rounds before a user falls back to the dense draw (a very peaked mixture)


class _ByCategory:
    """Draws items ~ w_i * a[c_i] for a per-user category vector a, without an (I,) pass per user."""

    def __init__(self, item_cat: np.ndarray, weight: np.ndarray, n_cat: int):
        self.order = np.argsort(item_cat, kind="stable")  # (I,) items grouped by category
        self.cum = np.cumsum(weight[self.order])  # (I,) cumulative weight in that order
        sizes = np.bincount(item_cat, minlength=n_cat)
        self.end = np.cumsum(sizes)  # (C,) exclusive end of each category's run in ``order``
        self.start = self.end - sizes  # (C,)
        before = np.concatenate([[0.0], self.cum])
        self.base = before[self.start]  # (C,) cumulative weight before each category
        self.total = before[self.end] - self.base  # (C,) W_c

    def draw(self, rng: np.random.Generator, affinity: np.ndarray, n: int) -> np.ndarray:
        """``n`` independent draws (with replacement) of item ids."""
        mix = affinity * self.total
        cat = np.searchsorted(np.cumsum(mix), rng.random(n) * mix.sum(), side="right")
        cat = np.minimum(cat, len(mix) - 1)  # guards the float edge u * sum == sum
        x = self.base[cat] + rng.random(n) * self.total[cat]
        pos = np.searchsorted(self.cum, x, side="right")
        pos = np.clip(pos, self.start[cat], self.end[cat] - 1)
        return self.order[pos]

    def distinct(self, rng: np.random.Generator, affinity: np.ndarray, k: int) -> np.ndarray | None:
        """``k`` distinct items, in order of first draw (= successive sampling without replacement);
        None when ``_MAX_ROUNDS`` rounds did not find them."""
        got = np.zeros(0, dtype=np.int64)
        for _ in range(_MAX_ROUNDS):
            draws = np.concatenate([got, self.draw(rng, affinity, 2 * (k - len(got)) + 8)])
            _, first = np.unique(draws, return_index=True)
            got = draws[np.sort(first)]
            if len(got) >= k:
                return got[:k]
        return None


def generate(n_users: int = 200, n_items: int = 300, mean_interactions: int = 20, seed: int = 0) -> RawData:
    """Synthetic :class:`RawData` (see module docstring); same arguments, same frames."""
    rng = np.random.default_rng(seed)
    n_cat = int(min(len(CATEGORY_NAMES), max(2, n_items // 25)))
    item_cat = rng.integers(n_cat, size=n_items)  # (I,) primary category
    second = np.where(rng.random(n_items) < 0.3, (item_cat + rng.integers(1, n_cat, size=n_items)) % n_cat, -1)
    log_w = -np.log1p(rng.permutation(n_items)).astype(np.float64)  # (I,) log Zipf popularity weight
    quality = rng.normal(0.0, 0.5, size=n_items)  # (I,)
    pref = rng.dirichlet(np.full(n_cat, 0.5), size=n_users)  # (U, C)
    counts = np.minimum(np.maximum(3, rng.poisson(mean_interactions, size=n_users)), n_items)  # (U,)
    sampler = _ByCategory(item_cat, np.exp(log_w), n_cat)

    users, items, ratings, times = [], [], [], []
    for u in range(n_users):
        k = int(counts[u])
        chosen = None
        if n_items > DENSE_ITEMS_PER_DRAW * k:
            chosen = sampler.distinct(rng, pref[u] + 0.05, k)
        if chosen is None:
            logits = log_w + np.log(pref[u, item_cat] + 0.05) + rng.gumbel(size=n_items)  # (I,)
            chosen = np.argpartition(-logits, k - 1)[:k]  # (k,) distinct items
        chosen = rng.permutation(chosen)  # random order
        affinity = np.tanh(n_cat * pref[u, item_cat[chosen]] - 1.0)
        r = np.clip(np.rint(3.0 + 1.5 * affinity + quality[chosen] + rng.normal(0.0, 0.7, size=k)), 1, 5)
        t = 1_600_000_000 + rng.integers(0, 30 * 86_400) + np.cumsum(rng.exponential(86_400, size=k))
        users.append(np.full(k, u + 1))
        items.append(chosen + 1)
        ratings.append(r)
        times.append(t.astype(np.int64))

    inter = pd.DataFrame({
        "user": np.concatenate(users).astype(str),
        "item": np.concatenate(items).astype(str),
        "rating": np.concatenate(ratings).astype(np.float64),
        "timestamp": np.concatenate(times).astype(np.int64),
    })
    names = np.asarray(CATEGORY_NAMES, dtype=object)
    cats = [[names[c]] if s < 0 else [names[c], names[s]] for c, s in zip(item_cat.tolist(), second.tolist())]
    titles = [f"{names[c]} item {i + 1}" for i, c in enumerate(item_cat.tolist())]
    items_df = items_frame([str(i + 1) for i in range(n_items)], titles, cats)
    return RawData(inter, items_df, f"synthetic (seed {seed}, {n_users} users, {n_items} items)")
