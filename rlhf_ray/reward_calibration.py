"""Does the reward track users? Rank correlation between reward and page quality.

Pair accuracy says whether the reward orders two given pages; PPO needs more: over the
pages the policy can write for a prompt, a higher reward should mean a page closer to what
the user went on to like. Measured on held-out users' golden pages (one per user and cut,
from a pair set): for each such prompt, the candidate pages are the golden page, that cut's
rejected pages (every family present but the graded pairs of policy pages) and ``n_samples`` pages sampled from the policy
(:func:`rlhf_ray.policy_pairs.policy_pages`, greedy first), each cut to the golden page's
length K'. A page's quality is its NDCG@K' against the window's positives P (binary gains,
ideal = min(|P|, K') hits at the top). Per prompt, Spearman's rho between the reward
(the mixed R the policy is trained on) and that NDCG; prompts whose pages all have the same
NDCG are skipped. Reported: the mean rho over users (each user's prompts averaged first)
with a 95% bootstrap interval, the same over the policy's own pages only (greedy and
sampled: the pages PPO's advantages compare with each other), and the share of prompts where
the policy's greedy page loses to the golden page.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from rlhf_ray import stats
from rlhf_ray.evaluation import pad_lists
from rlhf_ray.policy_pairs import GRADED_FAMILY, UserTimelines, golden_rows, policy_pages


def page_ndcg(page: list[int], positives: set[int], k: int) -> float:
    """Binary-gain NDCG@k of ``page`` against ``positives``."""
    dcg = sum(1.0 / np.log2(i + 2) for i, x in enumerate(page[:k]) if x in positives)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(positives), k)))
    return dcg / ideal if ideal > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); NaN when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _rho_per_user(frame: pd.DataFrame) -> dict:
    """Mean over users of Spearman(reward, ndcg) per prompt (a user's prompts averaged first), with its CI."""
    rho = frame.groupby("prompt").apply(lambda g: spearman(g["reward"].to_numpy(), g["ndcg"].to_numpy()),
                                        include_groups=False)
    per_prompt = pd.DataFrame({"rho": rho, "user": frame.groupby("prompt")["user"].first()}).dropna()
    per_user = per_prompt.groupby("user")["rho"].mean().to_numpy()
    return {**stats.bootstrap_ci(per_user), "prompts": int(len(per_prompt)), "users": int(len(per_user)),
            "pages_per_prompt": float(frame.groupby("prompt").size().mean())}


def calibration(reward, policy, vocab, prepared, pairs: pd.DataFrame, *, window: int, max_history: int,
                n_samples: int = 8, max_prompts: int = 0, seed: int = 0) -> dict:
    """Reward-vs-NDCG rank correlation over candidate pages of ``pairs``' prompts (see the module docstring).

    ``pairs``: the held-out users' rows of a pair set; ``policy``: the LM whose pages are sampled
    (its ``vocab``); ``reward``: a :class:`rlhf_ray.rewards.ModelReward`."""
    golden = golden_rows(pairs)
    if max_prompts and len(golden) > max_prompts:
        golden = golden.iloc[np.sort(np.random.default_rng(seed).choice(len(golden), max_prompts, replace=False))]
        golden = golden.reset_index(drop=True)
    tl = UserTimelines(prepared)
    K = int(max(map(len, golden["chosen"])))
    users = golden["user_idx"].astype(int).tolist()
    sampled = policy_pages(policy, vocab, golden["history"].tolist(), users, max_history, K, n_samples, 1.0, seed)
    by_cut = {k: g for k, g in pairs[pairs["family"] != GRADED_FAMILY].groupby(["user_idx", "cut"])}
    rows = []  # (prompt, user, page, ndcg, is_golden, is_greedy, is_policy)
    for i, r in enumerate(golden.itertuples(index=False)):
        chosen = list(r.chosen)
        pos = tl.positives(int(r.user_idx), int(r.cut), window)
        cands = [(chosen, True, False, False)]
        cands += [(list(p), False, False, False) for p in by_cut[(r.user_idx, r.cut)]["rejected"]]
        cands += [(p[: len(chosen)], False, j == 0, True) for j, p in enumerate(sampled[i]) if len(p) >= len(chosen)]
        for page, is_golden, is_greedy, is_policy in cands:
            rows.append((i, int(r.user_idx), page, page_ndcg(page, pos, len(chosen)), is_golden, is_greedy,
                         is_policy))
    hist = [golden["history"].iloc[i] for i, *_ in rows]
    uidx = [u for _, u, *_ in rows]
    totals = []
    for s in range(0, len(rows), 512):
        pages = torch.as_tensor(pad_lists([p for _, _, p, *_ in rows[s: s + 512]]))
        totals.append(reward(hist[s: s + 512], pages, user_idx=uidx[s: s + 512]).total.numpy())
    frame = pd.DataFrame({"prompt": [x[0] for x in rows], "user": uidx, "ndcg": [x[3] for x in rows],
                          "golden": [x[4] for x in rows], "greedy": [x[5] for x in rows],
                          "policy": [x[6] for x in rows], "reward": np.concatenate(totals)})
    g = frame[frame["golden"]].set_index("prompt")["reward"]
    gr = frame[frame["greedy"]].set_index("prompt")
    beat = gr["ndcg"] < frame[frame["golden"]].set_index("prompt").loc[gr.index, "ndcg"]
    wins = (g.loc[gr.index[beat]] > gr.loc[beat, "reward"]).to_numpy()
    return {"spearman": _rho_per_user(frame), "spearman_policy": _rho_per_user(frame[frame["policy"]]),
            "golden_beats_greedy": {**(stats.bootstrap_ci(wins.astype(float)) if len(wins) else {}),
                                    "prompts": int(len(wins))}}
