"""``rlhf-ray ppo``: PPO (PageLLM) on Ray actors.

    rlhf-ray ppo --sft runs/sft --reward runs/reward --data data/ml-100k --out runs/ppo
    rlhf-ray ppo ... --resume                         # continue from runs/ppo/state/latest
    rlhf-ray ppo ... --address auto                   # attach to a running Ray cluster
    rlhf-ray ppo ... --reward rule                    # rule-based reward, no reward model
    rlhf-ray ppo ... --config ppo.yaml --policy.ranks 2 --policy.train.zero-stage 3

Writes OUT/policy (the ``ppo`` checkpoint eval/serve load), OUT/state/ (resumable
states) and OUT/metrics.jsonl (one line per iteration and per validation). On a
multi-node cluster the actors read --sft/--reward/--data and write OUT/state
themselves: those paths must be on storage every node sees.
"""
from __future__ import annotations

import argparse
import json

from rlhf_ray.cliutil import add_config_args, add_config_file_arg, load_config
from rlhf_ray.config import PPOConfig


def _run(args: argparse.Namespace) -> int:
    from actors.orchestrator import PPOOrchestrator
    from rlhf_ray.rayutil import init_ray

    cfg = load_config(PPOConfig, args, key=args.config_key)
    orch = PPOOrchestrator(cfg, sft=args.sft, reward=args.reward, data=args.data, out=args.out)
    init_ray(args.address, num_cpus=None if args.address else (args.num_cpus or None))
    metrics = orch.run(resume=args.resume)
    shown = {k: v for k, v in metrics.items() if k.startswith("val/") and ("@10" in k or "page_" in k)
             or k in ("checkpoint", "iterations", "reward/total", "kl/per_page", "hacking_alerts", "stopped",
                      "wall_s")}
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    else:
        print("== ppo finished")
        for k in sorted(shown):
            v = shown[k]
            print(f"  {k:32s} {v:.4f}" if isinstance(v, float) else f"  {k:32s} {v}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ppo", help="stage 4: PPO with the mixed-grained reward on Ray actors",
        description="PPO (PageLLM) from an SFT checkpoint: rollout, reward, reference, policy and critic "
                    "actors on Ray; the final policy is written to OUT/policy.")
    p.add_argument("--sft", required=True, metavar="DIR", help="SFT checkpoint: initial policy, reference, critic")
    p.add_argument("--reward", required=True, metavar="DIR|rule",
                   help="reward checkpoint (rlhf-ray reward), or 'rule' for the rule-based reward")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data directory (rlhf-ray data prepare)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory: policy/, state/, metrics.jsonl")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="attach to a Ray cluster (auto | ray://host:10001); default: embedded local Ray on 127.0.0.1")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of the embedded local Ray (0 = all)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete state under OUT/state")
    p.add_argument("--json", action="store_true", help="print final metrics as JSON")
    add_config_file_arg(p)
    p.add_argument("--config-key", default=None, metavar="KEY", help="read this section of --config (e.g. ppo)")
    add_config_args(p, PPOConfig)
    p.set_defaults(func=_run)
