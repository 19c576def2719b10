"""``rlhf-ray <stage>`` for every registered stage, ``rlhf-ray eval`` and ``rlhf-ray pipeline``.

    rlhf-ray pretrain --data data/ml-100k --out runs/pretrain
    rlhf-ray sft --data data/ml-100k --init runs/pretrain --out runs/sft [--train.num-workers 2 --train.zero-stage 2]
    rlhf-ray reward --sft runs/sft --data data/ml-100k --out runs/reward
    rlhf-ray ppo --sft runs/sft --reward runs/reward --data data/ml-100k --out runs/ppo [--resume]
    rlhf-ray lpo --sft runs/sft --data data/ml-100k --out runs/lpo [--loss dpo]
    rlhf-ray eval --checkpoint runs/sft --data data/ml-100k [--json] [--predictions-out preds.parquet]

A stage's subcommand is made from its :class:`~rlhf_ray.stages.registry.Stage`: the starting
checkpoint flag, one ``--<name>`` per other checkpoint it needs, ``--resume`` if it resumes,
and one flag per config field.
"""
from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from rlhf_ray.cliutil import add_config_args, add_config_file_arg, load_config
from rlhf_ray.config import GenerationConfig
from rlhf_ray.jsonio import json_safe
from rlhf_ray.stages import registry
from rlhf_ray.stages.registry import Stage

SHOWN = ("checkpoint", "train/steps", "train/wall_s", "iterations", "reward/total", "kl/per_page", "hacking_alerts",
         "stopped", "wall_s")

def _print_metrics(title: str, metrics: dict, as_json: bool) -> None:
    """Print metrics as a table or as strict JSON (NaN/inf become null; "n/a" reasons kept)."""
    if as_json:
        print(json.dumps(json_safe(metrics), indent=2, sort_keys=True, default=str, allow_nan=False))
        return
    print(f"== {title}")
    for k in sorted(metrics):
        v = metrics[k]
        if isinstance(v, dict):
            for kk in sorted(v):
                print(f"  {kk:32s} n/a ({v[kk]})")
            continue
        print(f"  {k:32s} {v:.4f}" if isinstance(v, float) else f"  {k:32s} {v}")

def _run_stage(stage: Stage, args: argparse.Namespace) -> int:
    from rlhf_ray.stages.launch import launch

    cfg = load_config(stage.config, args, key=args.config_key)
    inputs = {need: getattr(args, f"input_{need}") for need in stage.needs}
    metrics = launch(stage, cfg, args.data, args.out, init=getattr(args, "init", None), inputs=inputs,
                     address=args.address, resume=getattr(args, "resume", False), num_cpus=args.num_cpus or None)
    shown = metrics if args.json else {k: v for k, v in metrics.items() if k in SHOWN or k.startswith(("val/", "norm/"))
                                       and isinstance(v, (int, float, str))}
    _print_metrics(f"{stage.name} finished", shown, args.json)
    return 0

def _eval(args: argparse.Namespace) -> int:
    from rlhf_ray.checkpoint import load_checkpoint, prompt_of
    from rlhf_ray.evaluation import evaluate_full
    from rlhf_ray.stages.common import check_compatible, open_data

    ck = load_checkpoint(args.checkpoint)
    # the history length the checkpoint was trained with, unless --max-history (or --config) says otherwise
    gen = load_config(GenerationConfig, args, base={"max_history": int(prompt_of(ck.manifest)["max_history"])})
    prepared = open_data(args.data)
    check_compatible(ck.catalog, prepared, args.checkpoint)
    ks = tuple(int(k) for k in args.k.split(",")) if args.k else None
    ev = evaluate_full(ck.model, ck.vocab, prepared, args.split, gen, ks=ks, max_users=args.max_users)
    metrics = {"checkpoint": str(args.checkpoint), "stage": ck.stage, "split": args.split,
               "protocol": ev.protocol, "max_history": gen.max_history, **ev.metrics, "n/a": ev.na}
    preds = ev.per_user
    if args.predictions_out:
        out = Path(args.predictions_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        preds.to_parquet(tmp, index=False)
        tmp.replace(out)
    _print_metrics(f"eval {ck.stage} on {args.split}", metrics, args.json)
    return 0

def _common(p: argparse.ArgumentParser, cls) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data directory (rlhf-ray data prepare)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="checkpoint directory to write (atomically); logs go to OUT.logs beside it")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="attach to a Ray cluster (auto | ray://host:10001); default: an embedded local Ray "
                        "where the stage needs Ray (train.num_workers >= 1, PPO), no Ray at all otherwise")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of the embedded local Ray (0 = all)")
    p.add_argument("--json", action="store_true", help="print final metrics as JSON")
    add_config_file_arg(p)
    p.add_argument("--config-key", default=None, metavar="KEY", help="read this section of --config")
    add_config_args(p, cls)

def add_stage_command(subparsers: argparse._SubParsersAction, stage: Stage) -> argparse.ArgumentParser:
    """The ``rlhf-ray <stage.name>`` subcommand (registry-driven; nothing here names a stage)."""
    p = subparsers.add_parser(stage.name, help=stage.help, description=stage.description or stage.help)
    if stage.starts_from is not None:
        p.add_argument(stage.init_flag, dest="init", required=stage.init_required, default=None, metavar="DIR",
                       help=stage.init_help)
    for need in stage.needs:
        p.add_argument(f"--{need}", dest=f"input_{need}", required=True, metavar="DIR",
                       help=stage.input_help.get(need, f"the {need} checkpoint"))
    if stage.resumable:
        p.add_argument("--resume", action="store_true",
                       help="continue from the newest complete state in OUT.state (else a state there is an error)")
    if stage.add_arguments is not None:
        stage.add_arguments(p)
    _common(p, stage.config)
    p.set_defaults(func=partial(_run_stage, stage))
    return p

def register(subparsers: argparse._SubParsersAction) -> None:
    for stage in registry.stages():
        add_stage_command(subparsers, stage)

    p = subparsers.add_parser("eval", help="evaluate a checkpoint (full ranking + generated pages)",
                              description="Full-ranking metrics and page metrics of a checkpoint on a split. "
                                          "Prompts hold as many history items as the checkpoint was trained with "
                                          "(its manifest's prompt) unless --max-history says otherwise.")
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--k", default=None, help="full-ranking cut-offs, comma separated (default: the protocol's: "
                   "10,20 for leave-one-out, 10,20,40,100 for the temporal split)")
    p.add_argument("--max-users", type=int, default=0, help="evaluate at most N users (0 = all)")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.add_argument("--predictions-out", default=None, metavar="FILE",
                   help="write each user's targets, ranking and generated page as Parquet")
    add_config_args(p, GenerationConfig)
    p.set_defaults(func=_eval)
