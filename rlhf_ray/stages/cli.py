"""``rlhf-ray pretrain | sft | eval``.

    rlhf-ray pretrain --data data/ml-100k --out runs/pretrain
    rlhf-ray sft --data data/ml-100k --init runs/pretrain --out runs/sft [--train.num-workers 2 --train.zero-stage 2]
    rlhf-ray eval --checkpoint runs/sft --data data/ml-100k [--json] [--predictions-out preds.parquet]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlhf_ray.cliutil import add_config_args, add_config_file_arg, load_config
from rlhf_ray.config import GenerationConfig, PretrainConfig, SFTConfig
from rlhf_ray.jsonio import json_safe


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


def _train(stage: str, cls):
    def run(args: argparse.Namespace) -> int:
        from rlhf_ray.stages.launch import launch

        cfg = load_config(cls, args, key=args.config_key)
        metrics = launch(stage, cfg, args.data, args.out, init=getattr(args, "init", None), address=args.address)
        shown = {k: v for k, v in metrics.items() if k.startswith("val/") and "@10" in k or k in
                 ("checkpoint", "train/steps", "train/wall_s", "val/rating_rmse")}
        _print_metrics(f"{stage} finished", shown, args.json)
        return 0

    return run


def _eval(args: argparse.Namespace) -> int:
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.evaluation import evaluate_full
    from rlhf_ray.stages.common import check_compatible, open_data

    gen = load_config(GenerationConfig, args)
    ck = load_checkpoint(args.checkpoint)
    prepared = open_data(args.data)
    check_compatible(ck.catalog, prepared, args.checkpoint)
    ks = tuple(int(k) for k in args.k.split(",")) if args.k else None
    ev = evaluate_full(ck.model, ck.vocab, prepared, args.split, gen, ks=ks, max_users=args.max_users)
    metrics = {"checkpoint": str(args.checkpoint), "stage": ck.stage, "split": args.split,
               "protocol": ev.protocol, **ev.metrics, "n/a": ev.na}
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
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write (atomically)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="attach to a Ray cluster (auto | ray://host:10001); default: embedded local Ray "
                        "when train.num_workers >= 1, no Ray at all when 0")
    p.add_argument("--json", action="store_true", help="print final metrics as JSON")
    add_config_file_arg(p)
    p.add_argument("--config-key", default=None, metavar="KEY", help="read this section of --config")
    add_config_args(p, cls)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain", help="stage 1: rating + meta-text pre-training",
                              description="Pre-train the ranker on rating prediction and item meta text.")
    _common(p, PretrainConfig)
    p.set_defaults(func=_train("pretrain", PretrainConfig))

    p = subparsers.add_parser("sft", help="stage 2: SFT on ground-truth ranked pages",
                              description="Supervised fine-tuning on ranked pages + next-item prediction.")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="checkpoint to start from (normally the pretrain output); default: a fresh model")
    _common(p, SFTConfig)
    p.set_defaults(func=_train("sft", SFTConfig))

    p = subparsers.add_parser("eval", help="evaluate a checkpoint (full ranking + generated pages)",
                              description="Full-ranking metrics and page metrics of a checkpoint on a split.")
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

    register_pipeline(subparsers)


def _pipeline(args: argparse.Namespace) -> int:
    from rlhf_ray.pipeline import default_config_path, load_pipeline_config, run_pipeline

    path = args.config or (None if args.smoke else default_config_path())
    cfgs = load_pipeline_config(path, smoke=args.smoke)
    if args.stages:
        cfgs["pipeline"] = cfgs["pipeline"].replace(stages=[s for s in args.stages.split(",") if s])
    run_pipeline(cfgs, args.out, address=args.address, force=args.force)
    return 0


def register_pipeline(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pipeline", help="the whole job: data -> pretrain -> sft -> reward -> ppo -> lpo -> eval",
        description="Run every stage in order with one YAML config (a section per stage). Stages whose "
                    "checkpoint is already complete for the same config and data are skipped, so a "
                    "killed run resumes where it stopped.")
    p.add_argument("--out", default="runs/ml-100k", metavar="DIR", help="run directory (default runs/ml-100k)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="pipeline YAML (sections: pipeline, data, pretrain, sft, reward, ppo, lpo, generation); "
                        "default: the bundled "
                        "rlhf_ray/configs/ml-100k.yaml")
    p.add_argument("--stages", default=None, metavar="A,B", help="run only these stages (default: all)")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data and a few steps per stage (CI)")
    p.add_argument("--force", action="store_true", help="retrain stages even if their checkpoint is complete")
    p.add_argument("--address", default=None, metavar="ADDR", help="attach to a Ray cluster (auto | ray://...)")
    p.set_defaults(func=_pipeline)
