"""LPO4Rec vs DPO / S-DPO on ml-100k: full-ranking NDCG / HR @10, @20 on the test split,
for all users and for users whose test target is a tail item.

    python bench/lpo_ml100k.py --data /tmp/ml100k-prepared [--sft DIR] [--epochs 1] [--smoke-test]

Without ``--sft`` a quick SFT checkpoint is trained first (the same as
``rlhf-ray sft --data DATA --out WORK/sft --train.epochs 3``). Every method then
starts from that checkpoint with the same optimisation settings and differs only
in its LPOConfig fields:

    sft              the starting checkpoint, no alignment
    dpo              loss=dpo   (1 negative, frozen reference)
    sdpo             loss=sdpo  (N negatives, frozen reference)
    lpo              loss=lpo   (N Gumbel-sampled head negatives, tail reweighting)  <- LPO4Rec
    lpo_uniform      ablation: sampler=uniform
    lpo_no_reweight  ablation: reweight_strength=0
    lpo_pool_all     ablation: pool=all (negatives from every item, not only head items)

Writes ``bench/results/lpo_ml100k.json`` (through bench/provenance.py) and prints a table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, results_dir  # noqa: E402
# tail_recall = tail hit rate under leave-one-out (one target per user); a metric the protocol leaves
# undefined is absent from evaluate()'s dict and shows as n/a
KEYS = ("ndcg@10", "ndcg@20", "hr@10", "hr@20", "tail_ndcg@10", "tail_ndcg@20", "tail_recall@10", "tail_recall@20")
METHODS = {
    "dpo": {"loss": "dpo"},
    "sdpo": {"loss": "sdpo"},
    "lpo": {},
    "lpo_uniform": {"sampler": "uniform"},
    "lpo_no_reweight": {"reweight_strength": 0.0},
    "lpo_pool_all": {"pool": "all"},
}


def train_sft(data: str, out: Path, epochs: int, smoke: bool) -> None:
    from rlhf_ray.config import SFTConfig
    from rlhf_ray.stages.launch import launch

    train = {"epochs": epochs, "progress": False, "tensorboard": False}
    if smoke:
        train.update(max_steps=5, eval_users=50)
    launch("sft", SFTConfig.from_dict({"train": train}), data, str(out))


def test_metrics(ckpt: Path, prepared, max_users: int) -> dict:
    from rlhf_ray.checkpoint import generation_for, load_checkpoint
    from rlhf_ray.evaluation import evaluate

    ck = load_checkpoint(ckpt)
    m, preds = evaluate(ck.model, ck.vocab, prepared, "test", generation_for(ck.manifest), ks=(10, 20), max_users=max_users,
                        pages=False)
    top = np.array(preds["ranking"].tolist())[:, :20]  # (U, 20) item_idx
    tail = prepared.is_tail
    m["tail_share@20"] = float(tail[top].mean())  # fraction of top-20 slots given to tail items
    m["tail_coverage@20"] = float(len(set(top[tail[top]].tolist())) / max(1, tail.sum()))  # tail items shown at all
    return m


def lpo_config(base: dict, overrides: dict):
    from rlhf_ray.config import LPOConfig

    return LPOConfig.from_dict({**base, **overrides})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/tmp/ml100k-prepared", help="prepared ml-100k (rlhf-ray data prepare)")
    p.add_argument("--sft", default=None, help="SFT checkpoint to start from (default: train one in --work)")
    p.add_argument("--work", default="/tmp/lpo-bench", help="where checkpoints are written")
    p.add_argument("--sft-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1, help="LPO / DPO epochs")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-negatives", type=int, default=16)
    p.add_argument("--reweight-strength", type=float, default=3.0)
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", "--smoke-test", dest="smoke_test", action="store_true",
                   help="a few steps per method, 50 users (checks the script); result to the smoke directory")
    p.add_argument("--out", default=None, help="result file (default bench/results/lpo_ml100k.json)")
    args = p.parse_args()
    run = Run(inputs={"data": args.data, "sft": args.sft})

    from rlhf_ray.stages.common import open_data
    from rlhf_ray.stages.launch import launch

    t_all = time.time()
    work = Path(args.work)
    sft = Path(args.sft) if args.sft else work / "sft"
    if not args.sft:
        t = time.time()
        train_sft(args.data, sft, args.sft_epochs, args.smoke_test)
        print(f"[bench] sft trained in {time.time() - t:.0f}s -> {sft}", flush=True)
        run.add_input("sft", sft)
    prepared = open_data(args.data)
    max_users = 50 if args.smoke_test else 0
    train = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
             "progress": False, "tensorboard": False, "patience": 0}
    if args.smoke_test:
        train.update(max_steps=3, eval_users=50)
    base = {"train": train, "n_negatives": args.n_negatives, "reweight_strength": args.reweight_strength,
            "tau": args.tau}
    results = {"sft": {**test_metrics(sft, prepared, max_users), "train_s": 0.0}}
    configs = {}
    for name in args.methods.split(","):
        cfg = lpo_config(base, METHODS[name])
        configs[name] = cfg.to_dict()
        t = time.time()
        final = launch("lpo", cfg, args.data, str(work / name), init=str(sft))
        results[name] = {**test_metrics(work / name, prepared, max_users), "train_s": time.time() - t,
                         "steps": final.get("train/steps"), "val_ndcg@10": final.get("val/ndcg@10")}
        print(f"[bench] {name}: ndcg@10 {results[name].get('ndcg@10', float('nan')):.4f} tail_recall@20 "
              f"{results[name].get('tail_recall@20', float('nan')):.4f} ({results[name]['train_s']:.0f}s)", flush=True)
    report = {
        "dataset": prepared.stats.get("dataset", "?"), "split": "test",
        "protocol": "full ranking over all items, seen items excluded",
        "sft": str(sft), "users": results["sft"].get("users"), "tail_users": results["sft"].get("tail_users"),
        "smoke_test": args.smoke_test, "wall_s": time.time() - t_all,
        "configs": configs, "results": results,
    }
    out = Path(args.out) if args.out else results_dir(args.smoke_test) / "lpo_ml100k.json"
    out = run.write(out.stem, report, results_dir=out.parent)
    print(f"\n{report['dataset']} test, {int(report['users'] or 0)} users ({int(report['tail_users'] or 0)} with a tail "
          f"target)")
    extra = ("coverage@20", "tail_share@20", "tail_coverage@20")
    print(f"{'method':16s} " + " ".join(f"{k:>12s}" for k in KEYS + extra) + f" {'train s':>7s}")
    for name, r in results.items():
        print(f"{name:16s} " + " ".join(f"{r[k]:12.4f}" if isinstance(r.get(k), float) and r[k] == r[k]
                                         else f"{'n/a':>12s}"
                                         for k in KEYS + extra) + f" {r['train_s']:7.0f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
