"""How far can a judge built from training ratings go on the reward model's held-out pairs?

    python bench/reward_judges.py --work runs/bench/loo --seeds 0,1,2

Issue 13 asks the reward model for pair accuracy of at least 0.90 overall and 0.80 on every
family. This bench asks what that demands of the data: on the same held-out pairs the reward
model is judged on (each seed's ``WORK/seed{s}/reward.pairs.parquet``, split ``test``: users
none of its pairs came from), it scores both pages of every pair with judges that learn
nothing but counts, and beside them the seed's own reward model (``WORK/seed{s}/reward``, its
mixed reward R, as ``rlhf-ray eval-reward`` scores it):

* ``rating``: the page's DCG of item quality, ``sum_k q(i_k) / log2(k + 2)``, with q(i) the
  item's mean rating over the *training-split* users' training ranges, shrunk toward the
  global mean by ``--shrink`` pseudo-ratings (no held-out user's rating enters it);
* ``popularity``: the same DCG of ``log(1 + training popularity)``;
* ``spread``: the page's category entropy (order-blind: a ranking pair is a tie);
* ``ppo_reward``: what PPO optimises less its grounded hit term: the reward model's R plus
  ``ppo.reward.diversity_weight`` (as the seed's PPO checkpoint records it) times the page's normalised
  category entropy, :class:`rlhf_ray.rewards.RuleReward`'s term. The hit term is left out: on a
  pair's window it would count the very positives the golden page is made of.

A pair counts 1 when the judge scores the chosen page higher, 1/2 on a tie, 0 otherwise.
Per family: mean over seeds (±std) of the pair accuracy, and for ``rating`` against the
reward model the paired 95% bootstrap interval over held-out users of the difference of
their per-user accuracies, per seed. No judge is tuned: each is the first thing one would
write, so a family where one beats the reward model shows a signal the model misses, and a
family where none reaches 0.80 shows how much harder that target is than counting.

Reads finished runs only (the protocol table's); trains nothing. Writes
``bench/results/reward_judges.json`` (``--name``: another file name).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import protocol_runs  # noqa: E402
from provenance import Run  # noqa: E402

JUDGES = ("rating", "popularity", "spread")
FAMILY_ORDER = ("relevance", "ranking", "diversity", "redundancy", "policy", "policy_graded")


def dcg(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B,) sum_k values[b, k] / log2(k + 2) over the valid slots."""
    disc = 1.0 / np.log2(np.arange(values.shape[1]) + 2.0)
    return (np.where(mask, values, 0.0) * disc).sum(1)


def item_quality(sequences, train_users: set[int], n_items: int, shrink: float) -> np.ndarray:
    """(I,) mean rating per item over ``train_users``' training ranges (items[:valid_start]),
    shrunk toward the global mean by ``shrink`` pseudo-ratings (an item nobody rated: the global mean)."""
    total, count = np.zeros(n_items), np.zeros(n_items)
    for u, items, ratings, start in zip(sequences["user_idx"], sequences["items"], sequences["ratings"],
                                        sequences["valid_start"]):
        if int(u) in train_users:
            np.add.at(total, np.asarray(items[:start], int), np.asarray(ratings[:start], float))
            np.add.at(count, np.asarray(items[:start], int), 1.0)
    mu = total.sum() / max(count.sum(), 1.0)
    denom = count + shrink
    return np.where(denom > 0, (total + shrink * mu) / np.where(denom > 0, denom, 1.0), mu)


def judge_scores(pages: np.ndarray, quality: np.ndarray, log_pop: np.ndarray,
                 categories: np.ndarray) -> dict[str, np.ndarray]:
    """{judge: (B,) score} of pages (B, K) item_idx, -1 = padding."""
    from rlhf_ray.metrics import category_entropy

    mask = pages >= 0
    safe = np.where(mask, pages, 0)
    return {"rating": dcg(quality[safe], mask), "popularity": dcg(log_pop[safe], mask),
            "spread": category_entropy(pages, categories)}


def wins(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """(N,) 1 where chosen > rejected, 0.5 on a tie (to 1e-9), 0 otherwise."""
    d = chosen - rejected
    return np.where(np.abs(d) <= 1e-9, 0.5, (d > 0).astype(float))


def diversity_weight(run_dir: Path) -> float:
    """``ppo.reward.diversity_weight`` the run's PPO stage trained with (its checkpoint's recorded
    config), or the config's default when the run has no PPO checkpoint."""
    import json

    from rlhf_ray.config import PPOConfig

    manifest = run_dir / "ppo" / "manifest.json"
    recorded = json.loads(manifest.read_text()).get("config") if manifest.is_file() else None
    return float(PPOConfig.from_dict(recorded, source=str(manifest)).reward.diversity_weight)


def seed_wins(run_dir: Path, shrink: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """({judge or "reward_model": (N,) wins}, families (N,), users (N,)) over one seed's test pairs."""
    from rlhf_ray.data.pairs import load_pairs
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.evaluation import pad_lists
    from rlhf_ray.rewards import ModelReward, RuleReward
    from rlhf_ray.stages.reward_model import score_pairs

    pairs, _ = load_pairs(run_dir / "reward.pairs.parquet")
    prep = load_prepared(run_dir / "data")
    train_users = set(pairs.loc[pairs["split"] == "train", "user_idx"].astype(int))
    test = pairs[pairs["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise SystemExit(f"{run_dir / 'reward.pairs.parquet'}: no pairs of split 'test' to judge")
    quality = item_quality(prep.sequences, train_users, prep.n_items, shrink)
    log_pop = np.log1p(np.asarray(prep.popularity, float))
    cats = np.asarray(prep.item_categories)
    c = judge_scores(pad_lists(test["chosen"].tolist()), quality, log_pop, cats)
    r = judge_scores(pad_lists(test["rejected"].tolist()), quality, log_pop, cats)
    out = {j: wins(c[j], r[j]) for j in JUDGES}
    reward = ModelReward.from_checkpoint(run_dir / "reward")
    s = score_pairs(reward, test)  # the reward's own normalisation, as eval-reward scores
    a = reward.alpha
    rc, rr = a * s.page_c + (1 - a) * s.item_c, a * s.page_r + (1 - a) * s.item_r
    out["reward_model"] = wins(rc, rr)
    spread = RuleReward(prep, "train", hit=0.0, tail=0.0, diversity=diversity_weight(run_dir), repeat=0.0)
    hist, users = test["history"].tolist(), test["user_idx"].tolist()
    dc, dr = (spread(hist, pad_lists(test[col].tolist()), user_idx=users).page.numpy() for col in ("chosen", "rejected"))
    out["ppo_reward"] = wins(rc + dc, rr + dr)
    return out, test["family"].to_numpy(), test["user_idx"].to_numpy()


def per_user(w: np.ndarray, users: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(len(order),) mean of ``w`` per user in ``order`` (NaN for a user with no pair)."""
    out = np.full(len(order), np.nan)
    pos = {int(u): i for i, u in enumerate(order)}
    sums, counts = np.zeros(len(order)), np.zeros(len(order))
    for x, u in zip(w, users):
        sums[pos[int(u)]] += x
        counts[pos[int(u)]] += 1
    has = counts > 0
    out[has] = sums[has] / counts[has]
    return out


def family_summary(per_seed: list[tuple[dict, np.ndarray, np.ndarray]]) -> dict:
    """{family: {"n_pairs", "n_users", judge: seed_summary, "rating_vs_reward_model": [paired_diff per seed]}}."""
    from rlhf_ray.stats import paired_diff, seed_summary

    fams = sorted({f for _, fam, _ in per_seed for f in fam},
                  key=lambda f: FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER))
    out = {}
    for group in ["overall", *fams]:
        row: dict = {"n_pairs": [], "n_users": []}
        diffs = []
        for w, fam, users in per_seed:
            sel = np.ones(len(fam), bool) if group == "overall" else fam == group
            order = np.unique(users[sel])
            row["n_pairs"].append(int(sel.sum()))
            row["n_users"].append(int(len(order)))
            for j, v in w.items():
                row.setdefault(j, []).append(float(v[sel].mean()))
            diffs.append(paired_diff(per_user(w["rating"][sel], users[sel], order),
                                     per_user(w["reward_model"][sel], users[sel], order)))
        out[group] = {"n_pairs": row.pop("n_pairs"), "n_users": row.pop("n_users"),
                      **{j: seed_summary(v) for j, v in row.items()}, "rating_vs_reward_model": diffs}
    return out


def markdown(result: dict) -> str:
    cols = ["reward_model", "ppo_reward", *JUDGES]
    lines = ["| family | pairs (users) per seed | reward model | reward model + category entropy (PPO's, less hits) | "
             "rating judge | popularity judge | spread judge | rating judge - reward model, per seed [95% CI over "
             "users] |", "|---|---|---|---|---|---|---|---|"]
    for fam, row in result["families"].items():
        cells = []
        for c in cols:
            s = row[c]
            cells.append(f"{s['mean']:.3f}" + (f" ±{s['std']:.3f}" if s.get("std") is not None else ""))
        diffs = "; ".join(f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {d['verdict']}"
                          if d["diff"] is not None else "n/a" for d in row["rating_vs_reward_model"])
        n = "/".join(str(x) for x in row["n_pairs"]) + " (" + "/".join(str(x) for x in row["n_users"]) + ")"
        lines.append(f"| {fam} | {n} | " + " | ".join(cells) + f" | {diffs} |")
    lines.append("")
    lines.append(f"Pair accuracy on each seed's held-out pairs (split 'test'), mean ±std over seeds "
                 f"{result['seeds']}; a tie counts 1/2. Rating judge: DCG of each item's mean rating over the "
                 f"training-split users (shrunk by {result['shrink']:g} pseudo-ratings); popularity judge: DCG of "
                 f"log(1 + training popularity); spread judge: category entropy; reward model: the seed's own, "
                 f"its mixed reward; PPO's: that plus ppo.reward.diversity_weight ({result['diversity_weight']}) "
                 f"x normalised category entropy. Intervals: paired bootstrap over the held-out users of the difference of "
                 f"per-user accuracies.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = protocol_runs.parser(__doc__, "reward", "the reward checkpoint under each seed's run", "reward_judges")
    p.add_argument("--shrink", type=float, default=5.0,
                   help="pseudo-ratings at the global mean added to every item's mean rating (default 5)")
    args = p.parse_args(argv)
    if args.shrink < 0:
        p.error(f"--shrink: must be >= 0, got {args.shrink}")
    work, seeds, _ = protocol_runs.checkpoints(p, args, always=("reward",))
    missing = [str(work / f"seed{s}" / "reward.pairs.parquet") for s in seeds
               if not (work / f"seed{s}" / "reward.pairs.parquet").is_file()]
    if missing:
        p.error("no pair file at " + ", ".join(missing))
    run = Run(inputs={**{f"seed{s}/reward": work / f"seed{s}" / "reward" for s in seeds},
                      **{f"seed{s}/data": work / f"seed{s}" / "data" for s in seeds}})
    per_seed = []
    for s in seeds:
        per_seed.append(seed_wins(work / f"seed{s}", args.shrink))
        w, _, _ = per_seed[-1]
        print(f"[reward-judges] seed {s}: " + "  ".join(f"{k} {v.mean():.3f}" for k, v in w.items()), flush=True)
    result = {"what": "held-out pair accuracy of count-based judges beside the reward model, per family",
              "seeds": seeds, "shrink": args.shrink, "judges": list(JUDGES),
              "diversity_weight": sorted({diversity_weight(work / f"seed{s}") for s in seeds}),
              "families": family_summary(per_seed)}
    result["markdown"] = markdown(result)
    run.write(args.name, result, results_dir=Path(args.results))
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
