"""Choose our SFT config on validation only: a small grid, each variant trained to convergence.

    .venv/bin/python bench/sft_select.py --protocol loo                 # the default grid below
    .venv/bin/python bench/sft_select.py --protocol loo --variant "lr5e-4:train.lr=0.0005"
    .venv/bin/python bench/sft_select.py --protocol loo --variant "shipped:train.epochs=40,train.patience=3" \
        --variant "cos16:train.epochs=16,train.patience=0" --variant "cos24:train.epochs=24,train.patience=0"

Each variant is the shipped pipeline config (``--config``) with the protocol's split and
Pareto tail (as ``bench/protocol_table.py`` builds it, seed 0) plus a few ``sft`` overrides,
run through ``rlhf-ray pipeline --stages data,pretrain,sft``. By default a variant trains with
an epoch cap that should not bind (``train.epochs`` 40) and early stopping on validation
NDCG@10 (``train.patience`` 3, best weights restored). A variant may instead fix the length of
the cosine schedule (``train.epochs=E,train.patience=0``): it then runs all E epochs down to
the schedule's floor and keeps its best validation epoch. That is a choice of schedule, made on
validation like any other, not a cap: early stopping inside a long cosine schedule stops while
the learning rate is still near its peak, where validation swings between epochs. The JSON
records ``stopped_by`` (``early_stopping`` or ``epochs``) for every variant. The variant with
the best *validation* NDCG@10 wins; test is never read here. The winner's overrides are
written to ``--write-config`` (default ``bench/configs/ml-100k-selected.yaml``), which
``protocol_table.py --config`` then runs for every seed, and its seed-0 run is reused there
as seed 0.

The grid is the same size as each peer's in ``bench/peers_bench.py`` (2 to 4 configs).
Writes ``bench/results/sft_select_{protocol}.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from protocol_table import protocol_config  # noqa: E402
from provenance import Run  # noqa: E402

CONVERGE = {"train.epochs": 40, "train.patience": 3}
#: name -> sft overrides (dotted paths inside the sft section)
GRID = {
    "stride20": {"window_stride": 20},
    "stride10": {"window_stride": 10},
    "stride20-lr1e-3": {"window_stride": 20, "train.lr": 0.001},
}


def set_dotted(d: dict, path: str, value) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def parse_variant(text: str) -> tuple[str, dict]:
    """"name:key=value,key=value" -> (name, {key: value}); values parsed as YAML scalars."""
    name, _, body = text.partition(":")
    if not name or not body:
        raise SystemExit(f"--variant {text!r}: expected NAME:key=value[,key=value...]")
    out = {}
    for item in body.split(","):
        k, eq, v = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text!r}: {item!r} is not key=value")
        out[k.strip()] = yaml.safe_load(v)
    return name, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--protocol", default="loo", choices=["loo", "pagellm"])
    p.add_argument("--config", default=str(ROOT / "rlhf_ray" / "configs" / "ml-100k.yaml"))
    p.add_argument("--variant", action="append", default=[],
                   help="NAME:sft.key=value,... (repeatable; default: the built-in grid)")
    p.add_argument("--work", default=None, help="default runs/bench/sft-select-PROTOCOL")
    p.add_argument("--write-config", default=str(BENCH / "configs" / "ml-100k-selected.yaml"))
    p.add_argument("--smoke", action="store_true", help="synthetic data, tiny models, 2 epochs")
    p.add_argument("--results", default=str(BENCH / "results"))
    args = p.parse_args(argv)
    grid = dict(parse_variant(v) for v in args.variant) if args.variant else GRID
    work = Path(args.work or ROOT / "runs" / "bench" / f"sft-select-{args.protocol}{'-smoke' if args.smoke else ''}")
    run = Run(inputs={"config": args.config})
    rows = {}
    for name, overrides in grid.items():
        raw = protocol_config(args.config, args.protocol, 0, args.smoke)
        for k, v in {**CONVERGE, **overrides}.items():
            set_dotted(raw["sft"], k, v)
        if args.smoke:
            set_dotted(raw["sft"], "train.epochs", 2)
        out = work / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(raw))
        cmd = [sys.executable, "-m", "rlhf_ray.cli", "pipeline", "--config", str(out / "config.yaml"),
               "--out", str(out), "--stages", "data,pretrain,sft"] + (["--smoke"] if args.smoke else [])
        print(f"[sft-select] {name}: $ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        manifest = json.loads((out / "sft" / "manifest.json").read_text())
        m = manifest.get("metrics", {})
        summary = json.loads((out / "summary.json").read_text())["stages"].get("sft", {})
        rows[name] = {"overrides": {**CONVERGE, **overrides}, "val_ndcg@10": m.get("val/ndcg@10"),
                      "val_recall@10": m.get("val/recall@10"), "stopped_by": m.get("train/stopped_by"),
                      "best_epoch": m.get("train/best_epoch"), "epochs_run": m.get("train/epochs_run"),
                      "train_wall_s": m.get("train/wall_s"), "stage_seconds": summary.get("seconds"),
                      "checkpoint": str(out / "sft")}
        run.add_input(name, out / "sft")
        print(f"[sft-select] {name}: val ndcg@10 {rows[name]['val_ndcg@10']} ({rows[name]['stopped_by']}, "
              f"best epoch {rows[name]['best_epoch']})", flush=True)
    best = max(rows, key=lambda n: rows[n]["val_ndcg@10"] or float("-inf"))
    print(f"[sft-select] best on validation: {best}")
    if not args.smoke:
        base = yaml.safe_load(Path(args.config).read_text()) or {}
        for k, v in rows[best]["overrides"].items():
            set_dotted(base.setdefault("sft", {}), k, v)
        dest = Path(args.write_config)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shown = Path(args.config).resolve()
        shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
        tmp.write_text(f"# {shown} with the SFT variant {best!r} chosen on {args.protocol} validation NDCG@10 "
                       f"by bench/sft_select.py;\n# every other setting (PPO, LPO, reward: the sweeps' choices) is {shown}'s\n"
                       + yaml.safe_dump(base, sort_keys=False))
        tmp.replace(dest)
        seed0 = ROOT / "runs" / "bench" / args.protocol / "seed0"
        if not seed0.exists():  # the winner is protocol_table's seed 0: same config, same seed
            shutil.copytree(work / best, seed0, symlinks=True)
    path = run.write(f"sft_select_{args.protocol}" + ("_smoke" if args.smoke else ""),
                     {"protocol": args.protocol, "grid": rows, "selected": best, "selected_by": "val/ndcg@10",
                      "config_written": None if args.smoke else args.write_config}, results_dir=args.results)
    print(f"[sft-select] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
