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

Pairs keep their user's split, so held-out users' "policy" pairs measure exactly the
calibration that matters: how often the reward prefers the page of the user's real next
positives over the policy's own page.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from rlhf_ray.config import GenerationConfig
from rlhf_ray.data.pages import candidates
from rlhf_ray.data.pairs import training_timeline
from rlhf_ray.generation import build_prompts, generate_pages
from rlhf_ray.tokens import Vocab

POLICY_FAMILY = "policy"


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


def add_policy_pairs(pairs: pd.DataFrame, prepared, model, vocab: Vocab, *, window: int, max_history: int,
                     n_pages: int, temperature: float, seed: int, log=print) -> pd.DataFrame:
    """``pairs`` plus the ``"policy"`` rows (see the module docstring), rows by user then cut.

    Existing ``"policy"`` rows are kept as they are (a pair file that already has them)."""
    if n_pages <= 0 or (pairs["family"] == POLICY_FAMILY).any():
        return pairs
    golden = pairs.drop_duplicates(["user_idx", "cut"]).reset_index(drop=True)
    tl = UserTimelines(prepared)
    users = golden["user_idx"].astype(int).tolist()
    K = int(max(map(len, golden["chosen"])))
    pages = policy_pages(model, vocab, golden["history"].tolist(), users, max_history, K, n_pages,
                         temperature, seed)
    rows = []
    for r, cand in zip(golden.itertuples(index=False), pages):
        chosen = list(r.chosen)
        pos = tl.positives(int(r.user_idx), int(r.cut), window)
        rated = tl.after(int(r.user_idx), int(r.cut))
        seen_pages = set()
        for page in cand:
            page = page[: len(chosen)]
            if len(page) < len(chosen) or sum(x in pos for x in page) >= len(chosen) or tuple(page) in seen_pages:
                continue
            seen_pages.add(tuple(page))
            rows.append({"user_idx": r.user_idx, "split": r.split, "cut": r.cut, "family": POLICY_FAMILY,
                         "history": list(r.history), "chosen": chosen, "rejected": page,
                         "chosen_ratings": list(r.chosen_ratings),
                         "rejected_ratings": [rated.get(x, float("nan")) for x in page]})
    log(f"reward: {len(rows)} on-policy rejected pages for {len(golden)} golden pages "
        f"({n_pages} policy page(s) each; the rest held as many positives as the golden page)")
    if not rows:
        return pairs
    out = pd.concat([pairs, pd.DataFrame(rows, columns=pairs.columns)], ignore_index=True)
    return out.sort_values(["user_idx", "cut"], kind="stable").reset_index(drop=True)
