"""Our PPO on Ray actors vs TRL's GRPOTrainer: completions (pages) per second, same run.

    python bench/ppo_vs_trl_grpo.py [--data /tmp/ml100k-prepared] [--sft DIR] [--reward DIR|rule]
                                    [--cycles 3] [--batch 64] [--smoke-test]

Same tiny policy (the SFT checkpoint, dropout off), same batch (B pages per rollout), same
page length (K tokens), same optimisation shape (minibatch B/2, 2 passes: 4 optimizer steps
per rollout), same KL coefficient to a frozen reference, and the same reward function (a
RewardFn from rlhf_ray.reward; TRL gets it as a reward function over completion token ids,
non-item tokens = empty slots). Differences that are the methods': TRL samples
``num_generations`` pages per prompt (B/G prompts) with plain HF ``generate`` over the whole
vocabulary and needs no critic; ours writes one page per user with the constrained decoder
and trains a critic. TRL runs in this process with all cores as torch threads; ours runs
the default colocated actor layout on an embedded Ray with all cores.

Throughput = pages of the measured rollouts / their wall time, after one warm-up rollout.
Writes bench/results/ppo_vs_trl_grpo.json and prints a table with the ratio (target >= 2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import DATA, REWARD, SFT, bench_env, ensure_reward, ensure_sft, machine, table, write_results  # noqa: E402

KL_COEF = 0.05
LR = 1e-5


def reward_fn(source: str, data: str):
    from actors.reward import build_reward
    from rlhf_ray.config import PPORewardConfig

    return build_reward(source, PPORewardConfig(), data)


def train_users(data: str, n: int, seed: int = 0):
    import numpy as np

    from rlhf_ray.stages.common import open_data

    h = open_data(data).histories("train")
    idx = np.random.default_rng(seed).permutation(len(h.histories))[:n]
    return [h.histories[i] for i in idx], [int(h.user_idx[i]) for i in idx]


def run_ours(args, K: int, max_history: int) -> dict:
    from actors.orchestrator import PPOOrchestrator
    from rlhf_ray.config import PPOConfig
    from rlhf_ray.rayutil import init_ray

    init_ray(num_cpus=os.cpu_count(), log_to_driver=False)
    cfg = PPOConfig.from_dict({
        "page_size": K, "max_history": max_history, "iterations": args.cycles + 1, "rollout_batch_size": args.batch,
        "ppo_epochs": 2, "kl_coef": KL_COEF, "eval_every": 0, "save_every": 0,
        "policy": {"train": {"batch_size": args.batch // 2, "lr": LR}},
        "critic": {"train": {"batch_size": args.batch // 2}},
    })
    with tempfile.TemporaryDirectory(prefix="ppo-vs-trl-") as out:
        orch = PPOOrchestrator(cfg, args.sft, args.reward, args.data, out, log=lambda s: None)
        orch.start()
        try:
            orch.iteration(0)  # warm-up
            runs = [orch.iteration(i) for i in range(1, args.cycles + 1)]
        finally:
            orch.shutdown()
    wall = sum(m["time/iteration_s"] for m in runs)
    return {"method": "rlhf-ray PPO (Ray actors)", "pages": args.batch * len(runs), "wall_s": wall,
            "pages_per_s": args.batch * len(runs) / wall, "optimizer_steps_per_rollout": int(runs[0]["policy/steps"]),
            "mean_reward": sum(m["reward/total"] for m in runs) / len(runs)}


def run_trl(args, K: int, max_history: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from actors.models import load_policy
    from rlhf_ray.generation import prompt_tokens

    torch.set_num_threads(os.cpu_count())
    ck = load_policy(args.sft)
    vocab, tok = ck.vocab, ck.tokenizer
    ck.model.generation_config.pad_token_id = vocab.pad
    fn = reward_fn(args.reward, args.data)
    G = args.num_generations
    hists, users = train_users(args.data, (args.cycles + 1) * args.batch // G)
    texts = [tok.decode(prompt_tokens(h, vocab, max_history), skip_special_tokens=False) for h in hists]
    ds = Dataset.from_dict({"prompt": texts, "history": hists, "user_idx": users})
    rewards: list[float] = []

    def page_reward(prompts, completions, completion_ids, history, user_idx, **kw):
        pages = torch.full((len(completion_ids), K), -1, dtype=torch.long)
        for b, ids in enumerate(completion_ids):
            for k, t in enumerate(list(ids)[:K]):
                if vocab.item_offset <= t < vocab.item_offset + vocab.n_items:
                    pages[b, k] = t - vocab.item_offset
        total = fn(history, pages, user_idx=user_idx).total.tolist()
        rewards.extend(total)
        return total

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

    steps_per_rollout = 2 * 2  # (B / minibatch) x num_iterations
    with tempfile.TemporaryDirectory(prefix="trl-grpo-") as out:
        cfg = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=10**6,
            per_device_train_batch_size=args.batch // 2, steps_per_generation=2, num_iterations=2,
            num_generations=G, max_completion_length=K, generation_kwargs={"min_new_tokens": K},
            beta=KL_COEF, learning_rate=LR, max_steps=steps_per_rollout * (args.cycles + 1), temperature=1.0,
            top_k=0, disable_dropout=True, seed=0, dataloader_num_workers=0, shuffle_dataset=False,
            gradient_checkpointing=False)  # a memory option; recomputation would only slow TRL down
        trainer = GRPOTrainer(model=ck.model, reward_funcs=page_reward, args=cfg, train_dataset=ds,
                              processing_class=tok, callbacks=[Stamp()])
        trainer.train()
    measured = stamps[steps_per_rollout - 1:]  # from the end of the warm-up rollout
    wall = measured[-1] - measured[0]
    pages = args.batch * args.cycles
    return {"method": f"TRL {__import__('trl').__version__} GRPOTrainer", "pages": pages, "wall_s": wall,
            "pages_per_s": pages / wall, "optimizer_steps_per_rollout": steps_per_rollout,
            "mean_reward": sum(rewards[args.batch:]) / max(1, len(rewards[args.batch:]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DATA)
    p.add_argument("--sft", default=SFT)
    p.add_argument("--reward", default=REWARD, help="reward checkpoint dir (trained if missing) or 'rule'")
    p.add_argument("--cycles", type=int, default=3, help="measured rollouts (+1 warm-up) per method")
    p.add_argument("--batch", type=int, default=64, help="pages per rollout")
    p.add_argument("--num-generations", type=int, default=4, help="TRL: pages per prompt (GRPO group)")
    p.add_argument("--smoke-test", action="store_true", help="1 measured rollout of 16 pages")
    args = p.parse_args()
    bench_env()
    if args.smoke_test:
        args.cycles, args.batch = 1, 16
    ensure_sft(args.data, args.sft)
    args.reward = ensure_reward(args.data, args.sft, args.reward)
    sft_cfg = json.loads((Path(args.sft) / "manifest.json").read_text())["config"]
    K, H = int(sft_cfg["page_size"]), int(sft_cfg["max_history"])
    ours = run_ours(args, K, H)
    print(f"[bench] ours: {ours['pages_per_s']:.1f} pages/s", flush=True)
    trl = run_trl(args, K, H)
    print(f"[bench] trl:  {trl['pages_per_s']:.1f} pages/s", flush=True)
    ratio = ours["pages_per_s"] / trl["pages_per_s"]
    rows = [ours, trl]
    print(table(rows, ["method", "pages_per_s", "wall_s", "pages", "optimizer_steps_per_rollout", "mean_reward"],
                "{:.3f}"))
    print(f"ratio ours / TRL = {ratio:.2f}x (target >= 2x)")
    write_results("ppo_vs_trl_grpo", {
        "what": "completions (pages) per second: rlhf-ray PPO on Ray actors vs TRL GRPOTrainer, same run",
        "inputs": {"data": args.data, "sft": args.sft, "reward": args.reward, "batch": args.batch, "page_size": K,
                   "max_history": H, "minibatch": args.batch // 2, "passes": 2, "kl_coef": KL_COEF, "lr": LR,
                   "trl_num_generations": args.num_generations, "measured_rollouts": args.cycles},
        "machine": machine(), "results": rows, "ratio_ours_over_trl": ratio, "target": 2.0})


if __name__ == "__main__":
    main()
