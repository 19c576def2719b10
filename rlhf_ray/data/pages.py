"""What a good page is: the one definition SFT targets, reward-model pairs and evaluation share.

PageLLM's ground-truth ranking. For a user whose training interactions are x_0, x_1, ... with
ratings y_i, cut at t (the prompt holds x_0 .. x_{t-1}):

1. candidates P = the positives (y_i > the data's positive threshold) among the next ``window``
   interactions x_t .. x_{t+window-1} (``window`` 0: to the end of the training part), each item
   once, none the user had before t;
2. order: rating, best first; ties by recency relative to the cut (sooner after t first);
3. diversify: a greedy pass in that order takes an item while its category has fewer than
   ``max_per_category`` items on the page; a second pass fills the page from the skipped ones,
   so the cap holds whenever the positives allow it;
4. the page = the first K taken, shown in the order of step 2.

SFT's default target (``sft.page_order: time``) is simpler: the next K positives after t in time order
(:func:`next_positives`). :func:`page_after` gives either, so every stage that teaches a page (SFT,
PPO-ptx's page term) builds the same one.

Who uses it: the reward model's chosen pages (:mod:`rlhf_ray.data.pairs`), SFT's page targets
(``sft.page_order: ground_truth``; ``time`` keeps the next K positives in time order, see
:mod:`rlhf_ray.stages.sft`), the on-policy negatives and the calibration of the reward
(:mod:`rlhf_ray.policy_pairs`, :mod:`rlhf_ray.reward_calibration`, which judge a page against P).
Evaluation scores pages against the held-out positives with the same ordering: the ideal page of
PageLLM's WAS and PWKT (:mod:`rlhf_ray.metrics`) is the targets by rating, best first; under
leave-one-out there is one target, so order and diversity do not enter the metric.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from rlhf_ray.config.common import PAGE_MAX_PER_CATEGORY as MAX_PER_CATEGORY
from rlhf_ray.config.common import PAGE_WINDOW as WINDOW


def golden_page(items: np.ndarray, ratings: np.ndarray, categories: np.ndarray, page_size: int,
                max_per_category: int) -> np.ndarray:
    """Indices into ``items`` (candidates in time order) forming the page: steps 2-4 above.

    ``categories``: the candidates' category codes. The result is ordered by (rating desc, index asc).
    """
    order = sorted(range(len(items)), key=lambda i: (-float(ratings[i]), i))
    taken, skipped, per_cat = [], [], Counter()
    for i in order:
        if len(taken) == page_size:
            break
        if per_cat[int(categories[i])] < max_per_category:
            taken.append(i)
            per_cat[int(categories[i])] += 1
        else:
            skipped.append(i)
    taken += skipped[: page_size - len(taken)]
    return np.asarray(sorted(taken, key=lambda i: (-float(ratings[i]), i)), dtype=np.int64)


def candidates(items: np.ndarray, ratings: np.ndarray, cut: int, threshold: float, window: int) -> np.ndarray:
    """Step 1: positions p >= ``cut`` (within ``window``) of positives whose item is new at ``cut``
    and not repeated earlier in the window, in time order."""
    end = len(items) if window == 0 else min(len(items), cut + window)
    seen = set(np.asarray(items[:cut]).tolist())
    out = []
    for p in range(cut, end):
        x = int(items[p])
        if ratings[p] > threshold and x not in seen:
            out.append(p)
        seen.add(x)
    return np.asarray(out, dtype=np.int64)


def ground_truth_page(items: np.ndarray, ratings: np.ndarray, cut: int, item_categories: np.ndarray,
                      threshold: float, page_size: int, window: int = WINDOW,
                      max_per_category: int = MAX_PER_CATEGORY) -> list[int]:
    """The good page of a user cut at ``cut`` (item ids; shorter than K when P is)."""
    pos = candidates(items, ratings, cut, threshold, window)
    if len(pos) == 0:
        return []
    its = np.asarray(items, dtype=np.int64)[pos]
    sel = golden_page(its, np.asarray(ratings)[pos], np.asarray(item_categories)[its], page_size, max_per_category)
    return its[sel].tolist()


def next_positives(items: np.ndarray, ratings: np.ndarray, cut: int, threshold: float, page_size: int) -> list[int]:
    """``sft.page_order: time``: the first ``page_size`` positives after ``cut`` (to the end of ``items``)
    the user had not had before ``cut``, in time order, a repeat kept once (item ids)."""
    seen = set(np.asarray(items[:cut]).tolist())
    page = [int(items[p]) for p in range(cut, len(items)) if ratings[p] > threshold and int(items[p]) not in seen]
    return list(dict.fromkeys(page[:page_size]))


def page_after(items: np.ndarray, ratings: np.ndarray, cut: int, threshold: float, page_size: int, order: str,
               item_categories: np.ndarray | None = None, window: int = WINDOW,
               max_per_category: int = MAX_PER_CATEGORY) -> list[int]:
    """The page SFT teaches for a user cut at ``cut`` (item ids, possibly empty): ``order`` "time"
    (:func:`next_positives`) or "ground_truth" (:func:`ground_truth_page`, needs ``item_categories``).
    ``items``/``ratings`` end where the positives may come from (the training range)."""
    if order == "time":
        return next_positives(items, ratings, cut, threshold, page_size)
    if order != "ground_truth":
        raise ValueError(f"page order must be time or ground_truth, got {order!r}")
    if item_categories is None:
        raise ValueError("page order ground_truth needs the item categories")
    return ground_truth_page(items, ratings, cut, item_categories, threshold, page_size, window, max_per_category)
