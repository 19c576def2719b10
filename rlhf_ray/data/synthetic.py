"""Seeded synthetic interactions for tests and smoke runs (never the default dataset).

Generative story, all drawn from ``numpy.random.default_rng(seed)``:

* item i has a primary category c_i (30% also a second one), a popularity weight
  w_i proportional to 1 / rank_i (Zipf, exponent 1, ranks shuffled) and a quality q_i ~ N(0, 0.5);
* user u has category preferences p_u ~ Dirichlet(0.5) and n_u = max(3, Poisson(mean)) interactions;
* u picks n_u distinct items with probability proportional to w_i * (p_u[c_i] + 0.05)
  (Gumbel top-k), in random order, at exponentially spaced times (mean gap 1 day);
* rating = clip(round(3 + 1.5 * tanh(C * p_u[c_i] - 1) + q_i + N(0, 0.7)), 1, 5), C categories,
  so a user rates the categories they prefer higher.

Ids are "1".."N" strings, so item_idx follows the generated order.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rlhf_ray.data.schema import RawData, items_frame

CATEGORY_NAMES = ("Action", "Comedy", "Drama", "Documentary", "Horror", "Romance", "Sci-Fi",
                  "Thriller", "Animation", "Western", "Musical", "Mystery")


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

    users, items, ratings, times = [], [], [], []
    for u in range(n_users):
        k = int(counts[u])
        logits = log_w + np.log(pref[u, item_cat] + 0.05) + rng.gumbel(size=n_items)  # (I,)
        chosen = rng.permutation(np.argpartition(-logits, k - 1)[:k])  # (k,) distinct items, random order
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
    cats = [[CATEGORY_NAMES[c]] + ([CATEGORY_NAMES[s]] if s >= 0 else []) for c, s in zip(item_cat, second)]
    titles = [f"{CATEGORY_NAMES[c]} item {i + 1}" for i, c in enumerate(item_cat)]
    items_df = items_frame([str(i + 1) for i in range(n_items)], titles, cats)
    return RawData(inter, items_df, f"synthetic (seed {seed}, {n_users} users, {n_items} items)")
