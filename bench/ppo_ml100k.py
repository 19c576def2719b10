"""PPO (PageLLM) vs the SFT ranker it starts from, on the ml-100k test split, with the
reward mix ratio ablated: alpha in {0, 0.5, 1} (item rewards only / both / page score only).

    python bench/ppo_ml100k.py [--data /tmp/ml100k-prepared] [--sft DIR] [--reward DIR]
                               [--iterations 12] [--alphas 0,0.5,1] [--smoke-test]

Metrics (test split, all users unless --test-users): full-ranking NDCG@10 and Recall@20,
tail Recall@20 (users whose target is a tail item), and on the greedy page the model writes:
ILD, category entropy and catalogue coverage (a metric undefined under the data's protocol is left out). Every PPO run has the same config and seed; only the reward's
alpha differs. Missing inputs are trained first with the CLI (bench/ppo_common.py):
``rlhf-ray sft --train.epochs 2`` and ``rlhf-ray reward --train.epochs 1``.

Writes bench/results/ppo_ml100k.json (through bench/provenance.py) and prints a table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, add_input_args, bench_env, prepare_inputs, results_dir, table  # noqa: E402

METRICS = ("ndcg@10", "recall@20", "tail_recall@20", "page_ild", "page_cat_entropy", "page_coverage")


def test_metrics(ckpt: str, prepared, K: int, H: int, max_users: int) -> dict:
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.config import GenerationConfig
    from rlhf_ray.evaluation import evaluate

    ck = load_checkpoint(ckpt)
    gen = GenerationConfig(page_size=K, strategy="greedy", max_history=H)
    m, _ = evaluate(ck.model.eval(), ck.vocab, prepared, "test", gen, ks=(10, 20), max_users=max_users)
    return {k: m[k] for k in METRICS if k in m}


def run_ppo(args, alpha: float, K: int, H: int) -> dict:
    from actors.orchestrator import PPOOrchestrator
    from rlhf_ray.config import PPOConfig

    cfg = PPOConfig.from_dict({
        "page_size": K, "max_history": H, "iterations": args.iterations, "rollout_batch_size": args.batch,
        "ppo_epochs": 2, "kl_coef": args.kl_coef, "eval_every": args.eval_every, "eval_users": 200,
        "save_every": 0, "seed": 0, "reward": {"alpha": alpha},
        "policy": {"train": {"batch_size": args.batch // 2, "lr": args.lr}},
        "critic": {"train": {"batch_size": args.batch // 2, "lr": args.critic_lr}},
    })
    out = Path(args.work) / f"alpha_{alpha:g}"
    for old in (out, out.with_name(out.name + ".state"), out.with_name(out.name + ".logs")):  # a fresh run
        if old.exists():
            import shutil

            shutil.rmtree(old)
    t0 = time.time()
    final = PPOOrchestrator(cfg, args.sft, args.reward, args.data, str(out)).run()
    final["wall_s"] = time.time() - t0
    return final


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(p, "reward checkpoint dir (trained if missing)")
    p.add_argument("--work", default="/tmp/ppo-bench-runs", help="PPO run directories")
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--batch", type=int, default=64, help="pages per iteration")
    p.add_argument("--lr", type=float, default=1e-4, help="policy learning rate")
    p.add_argument("--critic-lr", type=float, default=1e-4)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=6, help="validation (and hacking monitor) period")
    p.add_argument("--alphas", default="0,0.5,1")
    p.add_argument("--test-users", type=int, default=0, help="evaluate on at most N test users (0 = all)")
    p.add_argument("--smoke", "--smoke-test", dest="smoke_test", action="store_true",
                   help="2 iterations, alpha 0.5 only, 100 test users; result to the smoke directory")
    args = p.parse_args()
    bench_env()
    run = Run()
    if args.smoke_test:
        args.iterations, args.alphas, args.test_users, args.eval_every = 2, "0.5", 100, 2
    K, H = prepare_inputs(args, run)
    if args.reward == "rule":
        print("[bench] note: the rule reward has no alpha; the ablation needs a reward checkpoint")
    from rlhf_ray.rayutil import init_ray
    from rlhf_ray.stages.common import open_data

    prepared = open_data(args.data)
    init_ray(num_cpus=2, log_to_driver=False)
    rows = [{"model": "sft", **test_metrics(args.sft, prepared, K, H, args.test_users)}]
    print(f"[bench] sft: {rows[0]}", flush=True)
    for a in (float(x) for x in args.alphas.split(",")):
        final = run_ppo(args, a, K, H)
        row = {"model": f"ppo alpha={a:g}", **test_metrics(final["checkpoint"], prepared, K, H, args.test_users),
               "train_reward": final.get("reward/total"), "kl_per_page": final.get("kl/per_page"),
               "val_ndcg@10": final.get("val/ndcg@10"), "hacking_alerts": final.get("hacking_alerts"),
               "ppo_wall_s": final["wall_s"]}
        rows.append(row)
        print(f"[bench] {row['model']}: {row}", flush=True)
    cols = ["model", *METRICS, "train_reward", "kl_per_page"]
    print(table(rows, cols))
    path = run.write("ppo_ml100k", {
        "what": "PPO vs SFT on ml-100k test; reward mix ratio alpha ablation",
        "smoke": args.smoke_test,
        "settings": {"reward": args.reward, "iterations": args.iterations,
                   "batch": args.batch, "page_size": K, "max_history": H, "lr": args.lr, "critic_lr": args.critic_lr,
                   "kl_coef": args.kl_coef, "ppo_epochs": 2, "test_users": args.test_users or "all"},
        "results": rows}, results_dir=results_dir(args.smoke_test))
    print(f"[bench] wrote {path}")


if __name__ == "__main__":
    main()
