"""The reward model's scores of chosen and rejected pages, per preference family.

A bounded, seeded sample of the reward stage's pairs file (held-out splits first: pairs the
model did not train on), scored with :class:`rlhf_ray.rewards.ModelReward` exactly as PPO
scores pages (normalised page and item heads, mixed with the trained alpha).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PER_FAMILY = 256  # pairs scored per family: enough for a histogram, seconds on a CPU


def sample_pairs(path: Path, per_family: int = PER_FAMILY, seed: int = 0):
    """Up to ``per_family`` pairs of each family, from the held-out splits when they have any."""
    import pandas as pd

    pairs = pd.read_parquet(path, columns=["user_idx", "split", "family", "history", "chosen", "rejected"])
    held = pairs[pairs["split"] != "train"]
    pool = held if len(held) else pairs
    parts = [g.sample(min(per_family, len(g)), random_state=seed) for _, g in pool.groupby("family", sort=True)]
    split = "held-out (valid + test)" if len(held) else "training"
    return (pd.concat(parts) if parts else pool.iloc[:0]), split


def family_scores(reward_ckpt: Path, pairs_path: Path, per_family: int = PER_FAMILY) -> tuple[dict, str]:
    """``({family: {"chosen": (n,), "rejected": (n,)}}, split described)`` total rewards."""
    from rlhf_ray.evaluation import pad_lists
    from rlhf_ray.rewards import ModelReward

    sample, split = sample_pairs(pairs_path, per_family)
    reward = ModelReward.from_checkpoint(reward_ckpt)
    out = {}
    for fam, g in sample.groupby("family", sort=True):
        hist = [list(h) for h in g["history"]]
        users = g["user_idx"].tolist()
        width = max(max(map(len, g["chosen"])), max(map(len, g["rejected"])))
        out[fam] = {side: reward(hist, pad_lists(g[side], width=width), user_idx=users).total.numpy().astype(np.float64)
                    for side in ("chosen", "rejected")}
    return out, split
