"""Reward model stage (PageLLM's mixed-grained reward): Bradley-Terry on synthesised page pairs.

From the SFT checkpoint's backbone plus two scalar heads (:mod:`rlhf_ray.rewards` has
the scoring pass and the formulas), each step takes B pairs (history, chosen page,
rejected page) from :mod:`rlhf_ray.data.pairs`, scores the 2B pages in one forward
pass and minimises

    L = page_weight * BT(g_c, g_r) + item_weight * BT(rbar_c, rbar_r),
    BT(a, b) = -(1/B) sum_b log sigma(a_b - b_b),   rbar = (1/K') sum_t r_t

Validation scores the held-out ``valid`` users' pairs; its key metric is the pairwise
accuracy of the mixed reward R = alpha g~ + (1 - alpha) rbar~. Each validation also fits
the normalisation statistics (mean/std of g and rbar over ``norm_pairs`` training pairs'
chosen and rejected pages); those of the exported (best) weights go into the manifest
under ``reward.norm``, where :class:`rlhf_ray.rewards.ModelReward` reads them.

The pair set is written beside the checkpoint as ``<out>.pairs.parquet`` (config, seed
and data fingerprint in its metadata; its digest in the manifest) unless it was read
from ``pairs_file``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from rlhf_ray.config import PAIR_FAMILIES, PairsConfig, RewardConfig
from rlhf_ray.data.pairs import build_pairs, load_pairs, pairs_digest, pairs_meta, save_pairs
from rlhf_ray.engine import rank_world
from rlhf_ray.errors import DataError
from rlhf_ray.evaluation import pad_lists
from rlhf_ray.generation import build_prompts
from rlhf_ray.losses import bradley_terry
from rlhf_ray.model import Heads, hidden_size, train_top_blocks
from rlhf_ray.policy_pairs import POLICY_FAMILIES, add_policy_pairs
from rlhf_ray.rewards import HEAD_NAMES, ModelReward, RewardNorm, item_mean, score_pages
from rlhf_ray.seeding import rng, shard
from rlhf_ray.stages.common import check_context, check_history, exporter, run_stage
from rlhf_ray.stages.loop import StageSpec
from rlhf_ray.tokens import Vocab


# --------------------------------------------------------------------------- loss


def pair_loss(page_c: torch.Tensor, page_r: torch.Tensor, item_c: torch.Tensor, item_r: torch.Tensor,
              page_weight: float = 1.0, item_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """L = page_weight * BT(g_c, g_r) + item_weight * BT(rbar_c, rbar_r).

    ``page_*`` (B,) page scores g, ``item_*`` (B,) per-page mean item rewards rbar, of the
    chosen (c) and rejected (r) page of each pair.
    """
    l_page, s_page = bradley_terry(page_c, page_r)
    l_item, s_item = bradley_terry(item_c, item_r)
    loss = page_weight * l_page + item_weight * l_item
    return loss, {"l_page": s_page["loss"], "l_item": s_item["loss"], "acc_page": s_page["accuracy"],
                  "acc_item": s_item["accuracy"], "margin_page": s_page["margin"], "margin_item": s_item["margin"]}


def pair_batch(rows: pd.DataFrame, vocab: Vocab, max_history: int) -> dict:
    """B pairs -> prompts (2B, L) (each history twice) and pages (2B, K): chosen rows, then rejected."""
    hist = rows["history"].tolist()
    users = rows["user_idx"].tolist()
    prompts = build_prompts(hist + hist, vocab, max_history, exclude_seen=False, user_idx=users + users)
    pages = torch.as_tensor(pad_lists(rows["chosen"].tolist() + rows["rejected"].tolist()))  # (2B, K)
    return {"prompts": prompts, "pages": pages}


class RewardModule(nn.Module):
    """Backbone + page/item heads; ``forward(pair batch) -> (loss, stats)``."""

    def __init__(self, lm: nn.Module, heads: Heads, vocab: Vocab, cfg: RewardConfig):
        super().__init__()
        self.lm, self.heads, self.vocab = lm, heads, vocab
        self.page_weight, self.item_weight = cfg.page_weight, cfg.item_weight

    def forward(self, batch: dict):
        page, items, mask = score_pages(self.lm, self.heads, self.vocab, batch["prompts"], batch["pages"])
        rbar = item_mean(items, mask)  # (2B,)
        B = page.shape[0] // 2
        return pair_loss(page[:B], page[B:], rbar[:B], rbar[B:], self.page_weight, self.item_weight)


# --------------------------------------------------------------------------- scoring pairs


@dataclass
class PairScores:
    page_c: np.ndarray  # (N,) page score of the chosen page
    page_r: np.ndarray  # (N,) ... of the rejected page
    item_c: np.ndarray  # (N,) mean item reward of the chosen page
    item_r: np.ndarray  # (N,)
    family: np.ndarray  # (N,) str

    def normalised(self, norm: RewardNorm) -> "PairScores":
        p = lambda x: (x - norm.page_mean) / norm.page_std  # noqa: E731
        i = lambda x: (x - norm.item_mean) / norm.item_std  # noqa: E731
        return PairScores(p(self.page_c), p(self.page_r), i(self.item_c), i(self.item_r), self.family)


def score_pairs(reward: ModelReward, pairs: pd.DataFrame) -> PairScores:
    """Both pages of every pair under ``reward`` (with its own normalisation)."""
    hist, users = pairs["history"].tolist(), pairs["user_idx"].tolist()
    out = []
    for col in ("chosen", "rejected"):
        pages = torch.as_tensor(pad_lists(pairs[col].tolist()))
        res = reward(hist, pages, user_idx=users)
        out += [res.page.numpy(), item_mean(res.items, pages >= 0).numpy()]
    return PairScores(out[0], out[2], out[1], out[3], pairs["family"].to_numpy())


def accuracy_table(s: PairScores, alpha: float) -> dict[str, dict[str, float]]:
    """{group: {"page", "item", "mix": fraction of pairs with R(chosen) > R(rejected), "n"}} for
    group = "overall" and each family present; mix = alpha * page + (1 - alpha) * item."""
    wins = {"page": s.page_c > s.page_r, "item": s.item_c > s.item_r,
            "mix": alpha * s.page_c + (1 - alpha) * s.item_c > alpha * s.page_r + (1 - alpha) * s.item_r}
    groups = {"overall": np.ones(len(s.family), dtype=bool)}
    groups.update({f: s.family == f for f in (*PAIR_FAMILIES, *POLICY_FAMILIES) if (s.family == f).any()})
    return {g: {**{k: float(w[m].mean()) if m.any() else float("nan") for k, w in wins.items()}, "n": int(m.sum())}
            for g, m in groups.items()}


def evaluate_pairs(reward: ModelReward, pairs: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Pairwise accuracy per family of the page head, the item head and their mix."""
    return accuracy_table(score_pairs(reward, pairs), reward.alpha)


# --------------------------------------------------------------------------- pairs


def pairs_for_training(cfg: RewardConfig, prepared, policy=None, vocab: Vocab | None = None,
                       policy_source: str | None = None) -> tuple[pd.DataFrame, dict]:
    """``(pairs, meta)``: read ``cfg.pairs_file`` (same data required) or synthesise them; then,
    with a ``policy`` (an LM over ``vocab``) and ``cfg.policy_pages`` > 0, add its on-policy
    rejected pages (:mod:`rlhf_ray.policy_pairs`; a file that has them keeps its own)."""
    if cfg.pairs_file:
        df, meta = load_pairs(cfg.pairs_file)
        if meta.get("data_fingerprint") != prepared.fingerprint:
            raise DataError(f"{cfg.pairs_file}: built from other data (fingerprint {meta.get('data_fingerprint')!r}, "
                            f"{prepared.path} has {prepared.fingerprint!r})")
    else:
        df = build_pairs(prepared, cfg.pairs)
        meta = pairs_meta(df, prepared, cfg.pairs)
    if policy is None or cfg.policy_pages == 0 or df["family"].isin(POLICY_FAMILIES).any():
        return df, meta
    df = add_policy_pairs(df, prepared, policy, vocab, window=cfg.pairs.window, max_history=cfg.max_history,
                          n_pages=cfg.policy_pages, temperature=cfg.policy_temperature, seed=cfg.pairs.seed,
                          graded=cfg.policy_graded,
                          log=lambda m: print(m, flush=True) if rank_world()[0] == 0 else None)
    meta = {**pairs_meta(df, prepared, cfg.pairs), "policy": {
        "checkpoint": policy_source, "pages": cfg.policy_pages, "temperature": cfg.policy_temperature,
        **({"graded": cfg.policy_graded} if cfg.policy_graded else {})}}
    if cfg.pairs_file:
        meta["derived_from"] = str(cfg.pairs_file)  # a new set: written beside the checkpoint
    return df, meta


def negative_policy(cfg: RewardConfig, lm: nn.Module, vocab: Vocab, parent: dict | None):
    """``(model, source)`` that writes the on-policy negatives: ``cfg.policy_checkpoint`` (same
    vocabulary required), else the starting checkpoint's own LM; ``(None, None)`` when there is
    no policy (a fresh backbone) or the family is off."""
    if cfg.policy_pages == 0:
        return None, None
    if cfg.policy_checkpoint:
        from rlhf_ray.checkpoint import load_checkpoint
        from rlhf_ray.config import ConfigError

        ck = load_checkpoint(cfg.policy_checkpoint)
        check_history(ck.manifest, cfg, str(cfg.policy_checkpoint))
        if ck.vocab != vocab:
            raise ConfigError(f"policy_checkpoint: {cfg.policy_checkpoint} has another token layout than the "
                              f"reward model's starting checkpoint (trained from another SFT run?)")
        return ck.model, str(cfg.policy_checkpoint)
    if parent is None:
        return None, None
    return lm, f"{parent['stage']}:{parent['id']}"


def pairs_for_checkpoint(manifest: dict, prepared, pairs_file: str | None = None) -> pd.DataFrame:
    """The pair set a reward checkpoint was trained with: ``pairs_file`` if given, else the
    recorded file, else synthesised again from the recorded config (digest checked)."""
    if pairs_file:
        return load_pairs(pairs_file)[0]
    info = manifest.get("pairs") or {}
    rec = info.get("file")
    if rec and Path(rec).is_file():
        df, meta = load_pairs(rec)
        if meta.get("digest") == info.get("digest"):
            return df
    df = build_pairs(prepared, PairsConfig.from_dict(info.get("config"), source="manifest pairs.config"))
    if info.get("digest") and pairs_digest(df) != info["digest"]:
        raise DataError(f"the pairs synthesised again from {prepared.path} differ from those the reward model "
                        f"was trained on (other data?); pass the training pair file with --pairs")
    return df


# --------------------------------------------------------------------------- stage


def build_spec(cfg: RewardConfig, prepared, lm, tokenizer, vocab, catalog, out_dir: Path,
               parent: dict | None = None) -> StageSpec:
    if not cfg.pairs_file:  # fail before synthesis
        check_context(lm, vocab, cfg.max_history, cfg.pairs.page_size + 1, "page + <eos>")
    policy, source = negative_policy(cfg, lm, vocab, parent)
    pairs, meta = pairs_for_training(cfg, prepared, policy, vocab, source)
    page_size = int(max(map(len, pairs["chosen"])))
    check_context(lm, vocab, cfg.max_history, page_size + 1, "page + <eos>")
    pairs_path = cfg.pairs_file if "derived_from" not in meta else None
    if not pairs_path:
        pairs_path = str(out_dir.parent / f"{out_dir.name}.pairs.parquet")
        if rank_world()[0] == 0:
            save_pairs(pairs, pairs_path, meta)
    train = pairs[pairs["split"] == "train"].reset_index(drop=True)
    valid = pairs[pairs["split"] == "valid"].reset_index(drop=True)
    if len(train) == 0 or len(valid) == 0:
        raise DataError(f"reward: {len(train)} training and {len(valid)} validation pairs; need both "
                        f"(more users, or adjust pairs.valid_users / pairs.min_page)")
    heads = Heads(hidden_size(lm), HEAD_NAMES)
    module = RewardModule(lm, heads, vocab, cfg)
    counts = train_top_blocks(lm, cfg.train_blocks)
    if cfg.train_blocks >= 0 and rank_world()[0] == 0:
        print(f"[reward] training the top {cfg.train_blocks} block(s) + final norm + heads: "
              f"{counts['trainable']} backbone weights trained, {counts['frozen']} frozen", flush=True)
    bs = cfg.train.batch_size
    seed = cfg.train.seed
    norm_rows = train.iloc[np.sort(rng(seed, "norm_pairs").choice(
        len(train), size=min(cfg.norm_pairs, len(train)), replace=False))]

    def steps(world: int) -> int:
        return max(1, len(train) // bs)

    def batches(epoch: int, rank: int, world: int):
        order = rng(seed, "pairs", epoch).permutation(len(train))
        per_w = max(1, bs // world)
        for i in range(steps(world)):
            yield pair_batch(train.iloc[shard(order, i, per_w, rank, world)], vocab, cfg.max_history)

    def validate(mod: nn.Module) -> dict:
        raw = ModelReward(mod.lm, mod.heads, vocab, alpha=cfg.alpha, max_history=cfg.max_history)
        fit_s = score_pairs(raw, norm_rows)
        norm = RewardNorm.fit(torch.as_tensor(np.concatenate([fit_s.page_c, fit_s.page_r])),
                              torch.as_tensor(np.concatenate([fit_s.item_c, fit_s.item_r])))
        val_s = score_pairs(raw, valid)
        loss, _ = pair_loss(*(torch.as_tensor(x) for x in (val_s.page_c, val_s.page_r, val_s.item_c, val_s.item_r)),
                            cfg.page_weight, cfg.item_weight)
        table = accuracy_table(val_s.normalised(norm), cfg.alpha)
        out = {"val/loss": float(loss), "val/acc": table["overall"]["mix"],
               "val/acc_page": table["overall"]["page"], "val/acc_item": table["overall"]["item"]}
        out.update({f"val/acc_{g}": v["mix"] for g, v in table.items() if g != "overall"})
        out.update({"norm/page_mean": norm.page_mean, "norm/page_std": norm.page_std,
                    "norm/item_mean": norm.item_mean, "norm/item_std": norm.item_std})
        return out

    def extra(metrics: dict) -> dict:
        try:
            norm = RewardNorm(metrics["norm/page_mean"], metrics["norm/page_std"],
                              metrics["norm/item_mean"], metrics["norm/item_std"])
        except KeyError:
            raise RuntimeError("reward: no normalisation statistics in the final metrics "
                               "(validation never ran?)") from None
        return {"reward": {"alpha": cfg.alpha, "norm": norm.to_dict(), "max_history": cfg.max_history,
                           "page_size": page_size, "heads": HEAD_NAMES},
                "pairs": {**meta, "file": str(Path(pairs_path).resolve())}}

    export = exporter(out_dir, stage="reward", lm=lm, tokenizer=tokenizer, vocab=vocab, catalog=catalog,
                      config=cfg, prepared=prepared, heads=heads, parent=parent, extra=extra)
    return StageSpec("reward", module, batches, steps, validate, export, key_metric="val/acc", mode="max")


def run(cfg: RewardConfig, data_dir: str, out_dir: str, init: str | None = None) -> dict:
    """Train the reward model from ``init`` (the SFT checkpoint; None = a fresh backbone)."""
    return run_stage(build_spec, cfg, data_dir, out_dir, init, cfg.model)
