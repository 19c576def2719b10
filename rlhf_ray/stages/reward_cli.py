"""``rlhf-ray pairs | eval-reward`` (the reward stage itself is ``rlhf-ray reward``, from the registry).

    rlhf-ray pairs --data data/ml-100k --out runs/pairs.parquet [--strength 0.7 --families ranking,diversity]
    rlhf-ray reward --sft runs/sft --data data/ml-100k --out runs/reward [--config reward.yaml] [--alpha 0.5]
    rlhf-ray eval-reward --reward runs/reward --data data/ml-100k [--json]
"""
from __future__ import annotations

import argparse
import json

from rlhf_ray.cliutil import add_config_args, add_config_file_arg, load_config
from rlhf_ray.config import PairsConfig
from rlhf_ray.stages.cli import _print_metrics


def _pairs(args: argparse.Namespace) -> int:
    from rlhf_ray.data.pairs import build_pairs, pairs_meta, save_pairs
    from rlhf_ray.stages.common import open_data

    cfg = load_config(PairsConfig, args, key=args.config_key)
    prepared = open_data(args.data)
    df = build_pairs(prepared, cfg)
    meta = pairs_meta(df, prepared, cfg)
    out = save_pairs(df, args.out, meta)
    shown = {"out": str(out), "digest": meta["digest"], "pairs": meta["pairs"], "users": meta["users"],
             **{f"split/{k}": v for k, v in meta["by_split"].items()},
             **{f"family/{k}": v for k, v in meta["by_family"].items()}}
    _print_metrics("pairs written", shown, args.json)
    return 0


def _eval_reward(args: argparse.Namespace) -> int:
    from rlhf_ray.errors import DataError, UserError
    from rlhf_ray.rewards import ModelReward
    from rlhf_ray.stages.common import check_compatible, open_data
    from rlhf_ray.stages.reward_model import evaluate_pairs, pairs_for_checkpoint

    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    reward = ModelReward.from_checkpoint(args.reward, alpha=args.alpha, batch_size=args.batch_size)
    prepared = open_data(args.data)
    check_compatible(reward.catalog, prepared, args.reward)
    pairs = pairs_for_checkpoint(reward.manifest, prepared, args.pairs)
    rows = pairs[pairs["split"] == args.split]
    if len(rows) == 0:
        raise DataError(f"no {args.split!r} pairs to evaluate (the pair set was built with no such users)")
    table = evaluate_pairs(reward, rows)
    if args.json:
        print(json.dumps({"checkpoint": str(args.reward), "split": args.split, "alpha": reward.alpha,
                          "accuracy": table}, indent=2, sort_keys=True))
        return 0
    print(f"== pairwise accuracy of {args.reward} on {args.split} pairs (alpha = {reward.alpha:g})")
    print(f"  {'family':12s} {'n':>6s} {'page':>7s} {'item':>7s} {'mix':>7s}")
    for g, v in table.items():
        print(f"  {g:12s} {v['n']:6d} {v['page']:7.4f} {v['item']:7.4f} {v['mix']:7.4f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pairs", help="synthesise reward-model preference pairs as Parquet",
                              description="Golden pages vs. relevance / ranking / diversity / redundancy "
                                          "perturbations, from the training data of a prepared directory.")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data directory (rlhf-ray data prepare)")
    p.add_argument("--out", required=True, metavar="FILE", help="Parquet file to write (atomically)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    add_config_file_arg(p)
    p.add_argument("--config-key", default=None, metavar="KEY", help="read this section of --config")
    add_config_args(p, PairsConfig)
    p.set_defaults(func=_pairs)

    p = subparsers.add_parser("eval-reward", help="pairwise accuracy of a reward checkpoint per family",
                              description="Accuracy R(chosen) > R(rejected) on held-out pairs, per family, "
                                          "for the page head, the item head and their mix.")
    p.add_argument("--reward", required=True, metavar="DIR", help="reward checkpoint (rlhf-ray reward)")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data directory it was trained on")
    p.add_argument("--pairs", default=None, metavar="FILE",
                   help="pair file to evaluate (default: the training pair set, recorded in the checkpoint)")
    p.add_argument("--split", default="test", choices=["test", "valid", "train"], help="pairs of which users")
    p.add_argument("--alpha", type=float, default=None, help="mix ratio (default: the trained one)")
    p.add_argument("--batch-size", type=int, default=256, help="pages scored per forward pass")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=_eval_reward)
