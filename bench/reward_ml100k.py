"""Mixed-grained reward model on ml-100k: held-out pair accuracy per family (page head alone,
item head alone, their mix), and whether the reward prefers the page holding the user's true
next item over a random page.

    python bench/reward_ml100k.py --data /tmp/ml100k-prepared [--sft DIR] [--policy-pages N] [--smoke-test]

Without ``--sft`` a quick SFT checkpoint is trained first, the same as
``rlhf-ray sft --data DATA --out /tmp/reward-bench-sft --train.epochs 2``. The reward model
(``rlhf-ray reward`` with the settings below) starts from it. Measured:

* pair accuracy: fraction of held-out-user pairs (split "test", users never trained on)
  with R(chosen) > R(rejected), per family and overall; "page" = g alone, "item" = mean_t r_t
  alone, "mix" = alpha g~ + (1 - alpha) mean_t r~_t.
* next item: for each test user (history = items[:test_start]), the "true" page is the test
  item at slot 1 followed by the SFT model's greedy page without it (K - 1 items); it is
  compared with K random unseen items ("vs random") and with the SFT page itself ("vs sft":
  the true item replacing SFT's last slot and leading the page). Fraction of users with
  R(true page) > R(other page).
* calibration (``rlhf_ray.reward_calibration``): over held-out users' prompts, Spearman's rho
  between the reward and page NDCG across the golden page, its rejected pages and ``--samples``
  pages sampled from the SFT policy; and how often the golden page beats the policy's greedy page.
* training time on this machine: wall clock and this process's CPU time (the machine is
  shared: wall time varies with its load, CPU time much less).

Writes ``bench/results/reward_ml100k.json`` (through bench/provenance.py) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, results_dir  # noqa: E402


def train_sft(data: str, out: str) -> float:
    t = time.time()
    exe = str(Path(sys.executable).with_name("rlhf-ray"))
    subprocess.run([exe, "sft", "--data", data, "--out", out, "--train.epochs", "2", "--no-train.progress"],
                   check=True)
    return time.time() - t


def next_item_test(reward, sft_dir: str, prepared, page_size: int, max_users: int, seed: int) -> dict:
    """R(test item + SFT's page) vs R(random page) and vs R(SFT page), per head and mixed."""
    import numpy as np
    import torch

    from rlhf_ray.checkpoint import generation_for, load_checkpoint
    from rlhf_ray.generation import build_prompts, generate_pages
    from rlhf_ray.rewards import item_mean

    h = prepared.histories("test")
    n = len(h.histories) if not max_users else min(max_users, len(h.histories))
    hist, users = h.histories[:n], h.user_idx[:n].tolist()
    target = [t[0] for t in h.targets[:n]]
    ck = load_checkpoint(sft_dir)
    ck.model.eval()
    gen = generation_for(ck.manifest, page_size=page_size)  # the SFT's own prompt length
    sft_pages = []
    for s in range(0, n, 256):
        prompts = build_prompts(hist[s: s + 256], ck.vocab, gen.max_history, user_idx=users[s: s + 256])
        sft_pages.append(generate_pages(ck.model, ck.vocab, prompts, gen).items)
    sft = torch.cat(sft_pages)  # (n, K)
    rng = np.random.default_rng(seed)
    true, rand = [], []
    for b in range(n):
        rest = [int(x) for x in sft[b].tolist() if x != target[b] and x >= 0]
        true.append([target[b]] + rest[: page_size - 1])
        allowed = np.setdiff1d(np.arange(prepared.n_items), np.asarray(hist[b] + [target[b]]))
        rand.append(rng.choice(allowed, size=page_size, replace=False).tolist())
    pages = {"true": torch.tensor(true), "random": torch.tensor(rand), "sft": sft}
    out = {name: reward(hist, p, users) for name, p in pages.items()}
    scores = {name: {"page": o.page, "item": item_mean(o.items, pages[name] >= 0), "mix": o.total}
              for name, o in out.items()}
    return {f"vs_{other}": {head: float((scores["true"][head] > scores[other][head]).float().mean())
                            for head in ("page", "item", "mix")} for other in ("random", "sft")} | {"users": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/tmp/ml100k-prepared")
    ap.add_argument("--sft", default=None, help="SFT checkpoint (default: train one in /tmp/reward-bench-sft)")
    ap.add_argument("--out", default="/tmp/reward-bench/reward", help="reward checkpoint to write")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-history", type=int, default=None,
                    help="prompt history (default: the one the SFT checkpoint was trained with)")
    ap.add_argument("--policy-pages", type=int, default=None,
                    help="on-policy rejected pages per golden page (default: RewardConfig's; 0 = synthetic only)")
    ap.add_argument("--policy-graded", type=int, default=None,
                    help="graded pairs of policy pages per golden page (default: RewardConfig's; 0 = none)")
    ap.add_argument("--train-blocks", type=int, default=None,
                    help="reward.train_blocks: train only the top N transformer blocks (0: heads only; default: all)")
    ap.add_argument("--samples", type=int, default=8, help="calibration: policy pages sampled per held-out prompt")
    ap.add_argument("--max-prompts", type=int, default=400, help="calibration: at most N held-out prompts")
    ap.add_argument("--seed", type=int, default=0, help="training seed of the reward model")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: the 2 cores are shared)")
    ap.add_argument("--max-users", type=int, default=0, help="next-item test: at most N test users (0 = all)")
    ap.add_argument("--reuse", action="store_true",
                    help="--out already holds a trained reward checkpoint: evaluate it, do not train (its config "
                         "and training figures come from its manifest)")
    ap.add_argument("--ensemble", default="", metavar="DIR[,DIR]",
                    help="more reward checkpoints trained on the same pairs: evaluate the mean of --out's reward "
                         "and theirs (rlhf_ray.rewards.EnsembleReward)")
    ap.add_argument("--smoke", "--smoke-test", dest="smoke_test", action="store_true",
                    help="a few steps, to check the script runs; result to the smoke directory")
    ap.add_argument("--results", default=None, help="result file (default bench/results/reward_ml100k.json)")
    args = ap.parse_args()
    run = Run(inputs={"data": args.data, "sft": args.sft})

    import torch

    torch.set_num_threads(args.threads)
    from rlhf_ray.config import RewardConfig
    from rlhf_ray.rewards import EnsembleReward, ModelReward
    from rlhf_ray.stages import reward_model as stage
    from rlhf_ray.stages.common import open_data

    sft_s = None
    sft_dir = args.sft
    if sft_dir is None:
        sft_dir = "/tmp/reward-bench-sft"
        sft_s = train_sft(args.data, sft_dir)
        run.add_input("sft", sft_dir)
    if args.max_history is None:
        from rlhf_ray.checkpoint import prompt_of
        from rlhf_ray.storage import join, read_text

        args.max_history = int(prompt_of(json.loads(read_text(join(sft_dir, "manifest.json")) or "{}"))["max_history"])
    train = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "max_steps": args.max_steps,
             "progress": False, "tensorboard": False, "seed": args.seed}
    if args.smoke_test:
        train.update(max_steps=5, epochs=1)
    over = {k: v for k, v in (("policy_pages", args.policy_pages), ("policy_graded", args.policy_graded),
                              ("train_blocks", args.train_blocks)) if v is not None}
    cfg = RewardConfig.from_dict({"train": train, "max_history": args.max_history, "alpha": args.alpha,
                                  "pairs": {"strength": args.strength}, **over})
    t, cpu = time.time(), time.process_time()
    if args.reuse:
        manifest = ModelReward.from_checkpoint(args.out).manifest
        cfg, metrics = RewardConfig.from_dict(RewardConfig.upgrade(manifest["config"])), manifest["metrics"]
        train_s = train_cpu = None  # not trained here
    else:
        metrics = stage.run(cfg, args.data, args.out, sft_dir)
        train_s, train_cpu = time.time() - t, time.process_time() - cpu

    run.add_input("reward", args.out)
    prepared = open_data(args.data)
    members = [args.out, *[d for d in args.ensemble.split(",") if d]]
    for i, d in enumerate(members[1:], 1):
        run.add_input(f"ensemble{i}", d)
    reward = ModelReward.from_checkpoint(args.out) if len(members) == 1 else EnsembleReward.from_checkpoints(members)
    digests = {m.manifest["pairs"]["digest"] for m in getattr(reward, "members", [])}
    if len(digests) > 1:
        raise SystemExit(f"--ensemble: the members were trained on different pair sets ({sorted(digests)})")
    pairs = stage.pairs_for_checkpoint(reward.manifest, prepared)
    t = time.time()
    table = stage.evaluate_pairs(reward, pairs[pairs["split"] == "test"])
    eval_s = time.time() - t
    nxt = next_item_test(reward, sft_dir, prepared, cfg.pairs.page_size,
                         50 if args.smoke_test else args.max_users, seed=0)
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.reward_calibration import calibration

    policy = load_checkpoint(sft_dir)
    t = time.time()
    calib = calibration(reward, policy.model.eval(), policy.vocab, prepared, pairs[pairs["split"] == "test"],
                        window=cfg.pairs.window, max_history=cfg.max_history, n_samples=args.samples,
                        max_prompts=40 if args.smoke_test else args.max_prompts, seed=0)
    calib_s = time.time() - t

    result = {
        "config": cfg.to_dict(), "sft": sft_dir, "data": args.data, "smoke_test": args.smoke_test,
        "members": members, "reused": args.reuse,
        "pairs": {k: v for k, v in reward.manifest["pairs"].items() if k not in ("config",)},
        "held_out_pair_accuracy": table, "next_item": nxt, "calibration": calib,
        "calibration_wall_s": round(calib_s, 1),
        "train": {"steps": metrics.get("train/steps"), "best_epoch": metrics.get("epoch"),
                  # pair synthesis + model load + fit (validations included); None: --reuse, not trained here
                  "wall_s": None if train_s is None else round(train_s, 1),
                  "cpu_s": None if train_cpu is None else round(train_cpu, 1),  # this process, same span
                  "fit_wall_s": round(metrics.get("train/wall_s", float("nan")), 1),
                  "sft_wall_s": None if sft_s is None else round(sft_s, 1),
                  "best_val_acc": metrics.get("val/acc")},
        "eval_wall_s": round(eval_s, 1), "torch_threads": args.threads,
    }
    out = Path(args.results) if args.results else results_dir(args.smoke_test) / "reward_ml100k.json"
    out = run.write(out.stem, result, results_dir=out.parent)

    print(f"\nheld-out pair accuracy ({table['overall']['n']} pairs of test users, alpha = {reward.alpha:g})")
    print(f"  {'family':12s} {'n':>6s} {'page':>7s} {'item':>7s} {'mix':>7s}")
    for g, v in table.items():
        print(f"  {g:12s} {v['n']:6d} {v['page']:7.3f} {v['item']:7.3f} {v['mix']:7.3f}")
    print(f"\nnext item ({nxt['users']} test users): fraction with R(true item + SFT page) > R(other)")
    print(f"  {'other':12s} {'page':>7s} {'item':>7s} {'mix':>7s}")
    for k in ("vs_random", "vs_sft"):
        print(f"  {k:12s} {nxt[k]['page']:7.3f} {nxt[k]['item']:7.3f} {nxt[k]['mix']:7.3f}")
    sp, spp, gb = calib["spearman"], calib["spearman_policy"], calib["golden_beats_greedy"]
    print(f"\ncalibration ({sp['prompts']} held-out prompts of {sp['users']} users, "
          f"{sp['pages_per_prompt']:.1f} pages each): Spearman(reward, page NDCG) {sp['mean']:.3f} "
          f"[{sp['lo']:.3f}, {sp['hi']:.3f}]; over the policy's {spp['pages_per_prompt']:.1f} pages alone "
          f"{spp['mean']:.3f} [{spp['lo']:.3f}, {spp['hi']:.3f}] ({spp['prompts']} prompts); golden page beats "
          f"the policy's greedy page {gb.get('mean', float('nan')):.3f} of {gb['prompts']} prompts")
    tr = result["train"]
    print(f"\ntraining: {tr['steps']} steps, {tr['wall_s']} s wall in all ({tr['fit_wall_s']} s in the loop, "
          f"validations included), {tr['cpu_s']} s CPU; {args.threads} threads, load avg "
          f"{run.load_before[0] if run.load_before else float('nan'):.1f}; "
          f"held-out eval {eval_s:.1f} s"
          + (f"; SFT {sft_s:.0f} s" if sft_s else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
