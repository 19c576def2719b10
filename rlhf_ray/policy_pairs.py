"""On-policy hard negatives for the reward model: the policy's own pages where they miss the user.

The synthetic families of :mod:`rlhf_ray.data.pairs` perturb the golden page; none of them
looks like what the policy actually writes, so a reward trained on them alone can prefer
the policy's page over the page that holds the user's next positives (measured: it did, 68%
of the time). This module adds the pages the policy writes as rejected pages.

For every golden page of a pair set (one per user and cut t, prompt history x_0 .. x_{t-1}),
the policy writes ``n_pages`` pages for the same prompt (seen items blocked as in
evaluation): the greedy page first, then pages sampled at ``temperature``. Each is cut to
the golden page's length K'. With P = the positives among the window x_t .. x_{t+w-1}
(the set the golden page was drawn from), a policy page is a rejected page of family
``"policy"`` when it holds fewer items of P than the golden page does (K', since golden
pages hold only positives): it is then strictly less relevant to what the user went on to
like. A page holding as many is not worse and is dropped; duplicates of a page already
rejected for the same cut are dropped too.

"Refreshed as the policy moves": the pages come from whichever policy the reward stage is
given (``RewardConfig.policy_checkpoint``; by default the checkpoint it starts from, the
SFT policy). Retraining the reward model with a later policy (e.g. PPO's:
``rlhf-ray reward --sft runs/sft --policy_checkpoint runs/ppo``) gives negatives of that
policy, for a next alignment round.

Graded pairs (``graded`` > 0, family ``"policy_graded"``): the policy's own pages against
each other. Among the distinct pages written for a golden page's prompt, a page holding more
items of P is the chosen page and one holding fewer the rejected page; up to ``graded`` such
pairs per prompt, drawn at random (seeded) from all ordered pairs. The "policy" family only
teaches the reward that the policy's pages are worse than the golden page; PPO's advantages
compare the policy's own samples with each other, so the reward must also order those
(measured: trained without graded pairs, its rank correlation with page NDCG over the
policy's samples was -0.03).

Pairs keep their user's split, so held-out users' "policy" pairs measure exactly the
calibration that matters: how often the reward prefers the page of the user's real next
positives over the policy's own page.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from rlhf_ray.config import GenerationConfig
from rlhf_ray.data.pages import candidates
from rlhf_ray.data.pairs import training_timeline
from rlhf_ray.generation import build_prompts, generate_pages
from rlhf_ray.tokens import Vocab

POLICY_FAMILY = "policy"
GRADED_FAMILY = "policy_graded"
POLICY_FAMILIES = (POLICY_FAMILY, GRADED_FAMILY)


def golden_rows(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per golden page (user and cut), whose ``chosen`` is that golden page (graded rows'
    chosen pages are the policy's)."""
    return pairs[pairs["family"] != GRADED_FAMILY].drop_duplicates(["user_idx", "cut"]).reset_index(drop=True)


class UserTimelines:
    """Each user's training part (items, ratings) in time order, for looking up windows."""

    def __init__(self, prepared):
        s = prepared.sequences
        self.threshold = prepared.positive_threshold
        self.items, self.ratings = {}, {}
        for u, items, ratings, vs in zip(s["user_idx"], s["items"], s["ratings"], s["valid_start"]):
            self.items[int(u)], self.ratings[int(u)] = training_timeline(items, ratings, vs)  # as build_pairs

    def after(self, user_idx: int, cut: int) -> dict[int, float]:
        """{item: rating} of everything the user rated after ``cut`` in the training part."""
        return dict(zip(self.items[user_idx][cut:].tolist(), self.ratings[user_idx][cut:].tolist()))

    def positives(self, user_idx: int, cut: int, window: int) -> set[int]:
        """P: the window's positives, the candidates of the good page (:func:`rlhf_ray.data.pages.candidates`)."""
        its = self.items[user_idx]
        return set(its[candidates(its, self.ratings[user_idx], cut, self.threshold, window)].tolist())


@torch.no_grad()
def policy_pages(model, vocab: Vocab, histories: Sequence[Sequence[int]], user_idx: Sequence[int] | None,
                 max_history: int, page_size: int, n_pages: int, temperature: float, seed: int,
                 batch_size: int = 256) -> list[list[list[int]]]:
    """``n_pages`` pages per history: greedy, then sampled. ``[row][page] -> items``. ``user_idx``:
    each row's user (its token in the prompt when the vocabulary has user tokens)."""
    was_training = model.training
    model.eval()
    try:
        out: list[list[list[int]]] = [[] for _ in histories]
        gen = torch.Generator().manual_seed(int(seed))
        for j in range(n_pages):
            cfg = GenerationConfig(page_size=page_size, max_history=max_history,
                                   strategy="greedy" if j == 0 else "sample", temperature=temperature)
            for s in range(0, len(histories), batch_size):
                users = None if user_idx is None else list(user_idx[s: s + batch_size])
                prompts = build_prompts(histories[s: s + batch_size], vocab, max_history, user_idx=users)
                pages = generate_pages(model, vocab, prompts, cfg, generator=gen).items
                for b, row in enumerate(pages.tolist()):
                    out[s + b].append([x for x in row if x >= 0])
        return out
    finally:
        model.train(was_training)


def graded_pairs(pages: list[list[int]], positives: set[int], n: int, rng: np.random.Generator
                 ) -> list[tuple[list[int], list[int]]]:
    """Up to ``n`` (chosen, rejected) pairs of distinct ``pages`` where chosen holds more of ``positives``."""
    hits = [sum(x in positives for x in p) for p in pages]
    ordered = [(a, b) for a in range(len(pages)) for b in range(len(pages)) if hits[a] > hits[b]]
    if n <= 0 or not ordered:
        return []
    take = rng.choice(len(ordered), size=min(n, len(ordered)), replace=False)
    return [(pages[ordered[i][0]], pages[ordered[i][1]]) for i in sorted(take)]


def add_policy_pairs(pairs: pd.DataFrame, prepared, model, vocab: Vocab, *, window: int, max_history: int,
                     n_pages: int, temperature: float, seed: int, graded: int = 0, log=print) -> pd.DataFrame:
    """``pairs`` plus the ``"policy"`` rows and, with ``graded`` > 0, the ``"policy_graded"`` rows
    (see the module docstring), rows by user then cut.

    Existing policy rows of either family are kept as they are (a pair file that already has them)."""
    if n_pages <= 0 or pairs["family"].isin(POLICY_FAMILIES).any():
        return pairs
    golden = golden_rows(pairs)
    tl = UserTimelines(prepared)
    users = golden["user_idx"].astype(int).tolist()
    K = int(max(map(len, golden["chosen"])))
    pages = policy_pages(model, vocab, golden["history"].tolist(), users, max_history, K, n_pages,
                         temperature, seed)
    rows, n_graded = [], 0
    rng = np.random.default_rng(seed)
    for r, cand in zip(golden.itertuples(index=False), pages):
        chosen = list(r.chosen)
        pos = tl.positives(int(r.user_idx), int(r.cut), window)
        rated = tl.after(int(r.user_idx), int(r.cut))

        def row(family, good, good_ratings, bad):
            return {"user_idx": r.user_idx, "split": r.split, "cut": r.cut, "family": family,
                    "history": list(r.history), "chosen": good, "rejected": bad, "chosen_ratings": good_ratings,
                    "rejected_ratings": [rated.get(x, float("nan")) for x in bad]}

        distinct = list({tuple(p[: len(chosen)]): None for p in cand if len(p) >= len(chosen)})
        distinct = [list(p) for p in distinct]
        rows += [row(POLICY_FAMILY, chosen, list(r.chosen_ratings), p) for p in distinct
                 if sum(x in pos for x in p) < len(chosen)]
        for good, bad in graded_pairs(distinct, pos, graded, rng):
            rows.append(row(GRADED_FAMILY, good, [rated.get(x, float("nan")) for x in good], bad))
            n_graded += 1
    log(f"reward: {len(rows) - n_graded} on-policy rejected pages for {len(golden)} golden pages "
        f"({n_pages} policy page(s) each; the rest held as many positives as the golden page)"
        + (f"; {n_graded} graded pairs of policy pages (at most {graded} per golden page)" if graded else ""))
    if not rows:
        return pairs
    out = pd.concat([pairs, pd.DataFrame(rows, columns=pairs.columns)], ignore_index=True)
    return out.sort_values(["user_idx", "cut"], kind="stable").reset_index(drop=True)
