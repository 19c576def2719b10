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
* ``popularity``: the same DCG of ``log(1 + n_i)``, n_i the training-split users who rated the
  item in their training range (no held-out user counts, so a chosen page's items get nothing from
  the very user whose window they come from);
* ``spread``: the page's category entropy (order-blind: a ranking pair is a tie);
* ``ppo_reward``: what PPO optimises less its grounded hit term: the reward PPO's actor builds
  (:func:`actors.reward_actor.build_reward`) from the ``ppo.reward`` section the seed's PPO
  checkpoint records (model weight, clipping, members, category-entropy weight and credit), with
  ``hit_weight`` 0. The hit term is left out: on a pair's window it would count the very positives
  the golden page is made of.

A pair counts 1 when the judge scores the chosen page higher, 1/2 on a tie, 0 otherwise.
Per family: mean over seeds (±std) of the pair accuracy, and for ``rating`` against the
reward model the paired 95% bootstrap interval over held-out users of the difference of
their per-user accuracies, per seed. No judge is tuned: each is the first thing one would
write, so a family where one beats the reward model shows a signal the model misses, and a
family where none reaches 0.80 shows how much harder that target is than counting. The table's
cells are means over pairs; the interval is of per-user means (each held-out user once), so it need
not equal the difference of the two cells.

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
    from rlhf_ray.metrics import _discount  # the metrics' own DCG discount

    return (np.where(mask, values, 0.0) * _discount(values.shape[1])).sum(1)


def item_stats(sequences, train_users: set[int], n_items: int, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """(quality, count), each (I,), over ``train_users``' training ranges (items[:valid_start]) only:
    quality = the item's mean rating shrunk toward the global mean by ``shrink`` pseudo-ratings (an item
    nobody rated: the global mean); count = how many of those users rated it (its popularity)."""
    total, count = np.zeros(n_items), np.zeros(n_items)
    for u, items, ratings, start in zip(sequences["user_idx"], sequences["items"], sequences["ratings"],
                                        sequences["valid_start"]):
        if int(u) in train_users:
            np.add.at(total, np.asarray(items[:start], int), np.asarray(ratings[:start], float))
            np.add.at(count, np.asarray(items[:start], int), 1.0)
    mu = total.sum() / max(count.sum(), 1.0)
    denom = count + shrink
    return np.where(denom > 0, (total + shrink * mu) / np.where(denom > 0, denom, 1.0), mu), count


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


def ppo_reward_config(run_dir: Path):
    """The ``ppo.reward`` section the run's PPO stage trained with (its checkpoint's recorded config),
    hit term off: what PPO optimises less the hits (model weight, clipping, members, category entropy
    and its credit as recorded)."""
    import json

    from rlhf_ray.config import PPOConfig, PPORewardConfig

    manifest = run_dir / "ppo" / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"{manifest}: no PPO checkpoint; the ppo_reward judge needs the reward section PPO "
                         f"trained with (run the pipeline's ppo stage first)")
    cfg = PPOConfig.from_dict(json.loads(manifest.read_text()).get("config"), source=str(manifest)).reward
    return PPORewardConfig.from_dict({**cfg.to_dict(), "hit_weight": 0.0}, source=str(manifest))


def seed_wins(run_dir: Path, shrink: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """({judge or "reward_model": (N,) wins}, families (N,), users (N,)) over one seed's test pairs."""
    from actors.reward_actor import build_reward
    from rlhf_ray.data.pairs import load_pairs
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.evaluation import pad_lists
    from rlhf_ray.rewards import ModelReward
    from rlhf_ray.stages.reward_model import score_pairs

    pairs, _ = load_pairs(run_dir / "reward.pairs.parquet")
    prep = load_prepared(run_dir / "data")
    train_users = set(pairs.loc[pairs["split"] == "train", "user_idx"].astype(int))
    test = pairs[pairs["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise SystemExit(f"{run_dir / 'reward.pairs.parquet'}: no pairs of split 'test' to judge")
    quality, popularity = item_stats(prep.sequences, train_users, prep.n_items, shrink)
    log_pop = np.log1p(popularity)
    cats = np.asarray(prep.item_categories)
    c = judge_scores(pad_lists(test["chosen"].tolist()), quality, log_pop, cats)
    r = judge_scores(pad_lists(test["rejected"].tolist()), quality, log_pop, cats)
    out = {j: wins(c[j], r[j]) for j in JUDGES}
    reward = ModelReward.from_checkpoint(run_dir / "reward")
    s = score_pairs(reward, test)  # the reward's own normalisation, as eval-reward scores
    a = reward.alpha
    rc, rr = a * s.page_c + (1 - a) * s.item_c, a * s.page_r + (1 - a) * s.item_r
    out["reward_model"] = wins(rc, rr)
    ppo = build_reward(str(run_dir / "reward"), ppo_reward_config(run_dir), str(run_dir / "data"))
    hist, users = test["history"].tolist(), test["user_idx"].astype(int).tolist()
    pc, pr = (ppo(hist, pad_lists(test[col].tolist()), user_idx=users).total.numpy() for col in ("chosen", "rejected"))
    out["ppo_reward"] = wins(pc, pr)
    return out, test["family"].to_numpy(), test["user_idx"].to_numpy()


def per_user(w: np.ndarray, users: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(len(order),) mean of ``w`` per user in ``order`` (NaN for a user with no pair)."""
    import pandas as pd

    return pd.Series(w, dtype=float).groupby(np.asarray(users, dtype=np.int64)).mean().reindex(order).to_numpy()


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
                 f"log(1 + training-split users who rated the item); spread judge: category entropy; reward model: the seed's own, "
                 f"its mixed reward; PPO's: that plus ppo.reward.diversity_weight ({result['diversity_weight']}) "
                 f"x normalised category entropy, as its PPO checkpoint records the section, hits off. Cells are means over "
                 f"pairs; intervals: paired bootstrap over the held-out users of the difference of per-user accuracies "
                 f"(each user once), so an interval need not centre on the difference of two cells.")
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
    run = Run(inputs={**{f"seed{s}/{name}": work / f"seed{s}" / name for s in seeds
                         for name in ("reward", "data", "ppo", "reward.pairs.parquet")}})
    per_seed = []
    for s in seeds:
        per_seed.append(seed_wins(work / f"seed{s}", args.shrink))
        w, _, _ = per_seed[-1]
        print(f"[reward-judges] seed {s}: " + "  ".join(f"{k} {v.mean():.3f}" for k, v in w.items()), flush=True)
    result = {"what": "held-out pair accuracy of count-based judges beside the reward model, per family",
              "seeds": seeds, "shrink": args.shrink, "judges": list(JUDGES),
              "diversity_weight": sorted({ppo_reward_config(work / f"seed{s}").diversity_weight for s in seeds}),
              "families": family_summary(per_seed)}
    result["markdown"] = markdown(result)
    run.write(args.name, result, results_dir=Path(args.results))
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
