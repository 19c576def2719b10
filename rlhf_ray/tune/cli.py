"""``rlhf-ray tune --config tune_configs/ppo.yaml --out runs/ppo-sweep [--address auto] [--smoke]``."""
from __future__ import annotations

import argparse


def _tune(args: argparse.Namespace) -> int:
    from rlhf_ray.tune.spec import describe, load_sweep

    sweep = load_sweep(args.config, smoke=args.smoke)  # every config error surfaces here, before Ray
    if args.check:
        print("\n".join(describe(sweep)))
        print("[tune] the sweep file is valid")
        return 0
    from rlhf_ray.tune.sweep import run_sweep

    summary = run_sweep(sweep, args.out, address=args.address, num_cpus=args.num_cpus,
                        evaluate_test=not args.no_test)
    print(f"[tune] done in {summary['seconds']:.0f} s: {args.out}/results.md, {args.out}/plots/, "
          f"{args.out}/best/")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune", help="Ray Tune sweep over config fields (KL weight, reward mix, Gumbel temperature, ...)",
        description="Prepare the shared checkpoints once (the sweep's 'prepare' steps), then run the trials on "
                    "Ray Tune (each trains the sweep's 'trial' stages with sampled values), select the best on "
                    "validation, evaluate it and the default config on test once, export it to OUT/best and "
                    "write OUT/results.md, results.csv, pareto.csv and plots/. Rerunning on the same OUT "
                    "continues an interrupted sweep without rerunning finished trials.",
        epilog="Shipped sweeps: tune_configs/ppo.yaml (KL weight x reward mix), lpo.yaml (Gumbel temperature x "
               "negatives x reweighting), align.yaml (PPO then LPO), smoke.yaml (tiny, for tests). "
               "Serve the selected policy: rlhf-ray serve --checkpoint OUT/best.")
    p.add_argument("--config", required=True, metavar="FILE", help="sweep YAML (see tune_configs/)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="sweep directory (on storage every node sees when --address points at a cluster)")
    p.add_argument("--address", default=None, metavar="ADDR", help="attach to a Ray cluster (auto | ray://...)")
    p.add_argument("--num-cpus", type=int, default=None, metavar="N",
                   help="logical CPUs of the local Ray started without --address (default: this machine's)")
    p.add_argument("--smoke", action="store_true", help="apply the pipeline's --smoke and the sweep's smoke section")
    p.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation")
    p.add_argument("--check", action="store_true", help="only check the sweep file (no Ray, no training)")
    p.set_defaults(func=_tune)
