"""Our PPO on Ray actors vs TRL's GRPOTrainer: pages per second, like for like, interleaved repeats.

    python bench/ppo_vs_trl_grpo.py --data DIR --sft DIR --reward DIR|rule
                                    [--repeats 3] [--cycles 3] [--batch 64] [--smoke]

What is the same on both sides:

* the policy: the SFT checkpoint (dropout off), fp32 on CPU, learning rate 1e-5, KL coefficient
  0.05 to a frozen copy of it;
* the action space: TRL generates through a ``transformers`` LogitsProcessor
  (:class:`PageConstraint`) that keeps, at every step, only item tokens that are not in the user's
  history (all of it, as ``build_prompts`` blocks) and not already on the page, i.e. the
  distribution ``rlhf_ray.generation.generate_pages`` samples from (temperature 1, no top-k). The
  processor is attached by wrapping the policy's ``generate`` (TRL 1.16's regular ``generate``
  path takes no processor argument); the JSON counts empty, repeated and seen slots on TRL's
  pages, which must all be 0;
* the prompts: ``prompt_tokens`` (user token included when the vocabulary has them), handed to
  TRL as text that tokenises back to exactly those ids (checked);
* the reward callable: ``actors.reward_actor.build_reward`` with the default PPO reward config, the
  same object type our reward actor builds; TRL gets its page total;
* the optimisation shape: B pages per rollout, minibatch B/2, 2 passes = 4 optimiser steps per
  rollout, one warm-up rollout then ``--cycles`` measured ones.

Each measurement runs in a fresh subprocess, interleaved: ours, TRL, ours, TRL, ... for
``--repeats`` rounds. Before every TRL run the driver waits until every Ray process the bench
started is gone (``ray.shutdown`` in our subprocess, then /proc is checked) and records what it
found; the TRL subprocess records the Ray processes it saw at start and end.
Throughput = pages of the measured rollouts / their wall time. Reported per side: median, min,
max over repeats; the ratio of medians (ours / TRL).

What still differs (also in the JSON under ``differences``): ours trains a critic (GAE
advantages) and writes one page per user; GRPO needs ``num_generations`` >= 2 pages per prompt
(B / G users per rollout) and no critic; TRL's loss and KL use log-probs over the whole
vocabulary (its sampling is restricted, its log-prob computation is not); our KL is a per-slot
penalty in the reward (k1), TRL's is a k3 term in the loss; ours runs colocated Ray actors with one
BLAS thread each, TRL one process with all cores as torch threads.

Writes bench/results/ppo_vs_trl_grpo.json through bench/provenance.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import (Run, add_input_args, bench_env, prepare_inputs, ray_processes, results_dir,  # noqa: E402
                        sft_prompt, spread, table, wait_ray_gone)

KL_COEF = 0.05
LR = 1e-5
PASSES = 2  # ppo_epochs (ours) = num_iterations (TRL)
MINIBATCHES = 2  # B / minibatch (ours) = steps_per_generation (TRL)


def reward_fn(source: str, data: str):
    from actors.reward_actor import build_reward
    from rlhf_ray.config import PPORewardConfig

    return build_reward(source, PPORewardConfig(), data)


def train_users(data: str, n: int, seed: int = 0):
    import numpy as np

    from rlhf_ray.stages.common import open_data

    h = open_data(data).histories("train")
    idx = np.random.default_rng(seed).permutation(len(h.histories))[:n]
    return [list(map(int, h.histories[i])) for i in idx], [int(h.user_idx[i]) for i in idx]


# --------------------------------------------------------------------------- ours (one subprocess)


def run_ours(args, K: int, H: int) -> dict:
    import ray

    from actors.orchestrator import PPOOrchestrator
    from rlhf_ray.config import PPOConfig
    from rlhf_ray.rayutil import init_ray

    init_ray(num_cpus=os.cpu_count(), log_to_driver=False)
    cfg = PPOConfig.from_dict({
        "page_size": K, "max_history": H, "iterations": args.cycles + 1, "rollout_batch_size": args.batch,
        "ppo_epochs": PASSES, "kl_coef": KL_COEF, "eval_every": 0, "save_every": 0, "seed": args.seed,
        "policy": {"train": {"batch_size": args.batch // MINIBATCHES, "lr": LR}},
        "critic": {"train": {"batch_size": args.batch // MINIBATCHES}},
    })
    try:
        with tempfile.TemporaryDirectory(prefix="ppo-vs-trl-") as out:
            orch = PPOOrchestrator(cfg, args.sft, args.reward, args.data, out, log=lambda s: None)
            orch.start()
            try:
                orch.iteration(0)  # warm-up
                runs = [orch.iteration(i) for i in range(1, args.cycles + 1)]
            finally:
                orch.shutdown()
    finally:
        ray.shutdown()
    wall = sum(m["time/iteration_s"] for m in runs)
    return {"side": "ours", "method": "rlhf-ray PPO (Ray actors)", "pages": args.batch * len(runs), "wall_s": wall,
            "pages_per_s": args.batch * len(runs) / wall, "rollout_s": [m["time/iteration_s"] for m in runs],
            "optimizer_steps_per_rollout": int(runs[0]["policy/steps"]),
            "mean_reward": sum(m["reward/total"] for m in runs) / len(runs),
            "phases_s": {p: sum(m[f"time/{p}_s"] for m in runs) / len(runs)
                         for p in ("sync", "generate", "score", "advantage", "train")},
            "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "layout": "colocated Ray actors"}}


# --------------------------------------------------------------------------- TRL (one subprocess)


def page_constraint(vocab, blocked_by_prompt: dict):
    """A LogitsProcessor factory: our constrained decoder's action space for HF ``generate``.

    ``blocked_by_prompt`` maps a prompt's token ids (tuple, no padding) to its (n_items,) bool mask of
    items that may never be on the page (the user's whole history, as ``build_prompts`` computes)."""
    import torch
    from transformers import LogitsProcessor

    lo, n = vocab.item_offset, vocab.n_items

    class PageConstraint(LogitsProcessor):
        calls = 0

        def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
            self.L = input_ids.shape[1]
            rows = []
            for b in range(input_ids.shape[0]):
                ids = input_ids[b] if attention_mask is None else input_ids[b][attention_mask[b].bool()]
                rows.append(blocked_by_prompt[tuple(int(t) for t in ids.tolist())])
            self.blocked = torch.stack(rows).to(input_ids.device)  # (B, n_items)

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            PageConstraint.calls += 1
            blocked = self.blocked.clone()
            gen = input_ids[:, self.L:] - lo  # items already on the page
            rows, cols = ((gen >= 0) & (gen < n)).nonzero(as_tuple=True)
            blocked[rows, gen[rows, cols]] = True
            out = torch.full_like(scores, float("-inf"))
            out[:, lo: lo + n] = scores[:, lo: lo + n].masked_fill(blocked, float("-inf"))
            dead = blocked.all(dim=1)  # nothing allowed (never on ml-100k): emit padding, an empty slot
            if dead.any():
                out[dead, vocab.pad] = 0.0
            return out

    return PageConstraint


def run_trl(args, K: int, H: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import LogitsProcessorList, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from actors.models import load_policy
    from rlhf_ray.generation import build_prompts, prompt_tokens

    ray_at_start = {p: c for p, c in ray_processes().items() if p not in _baseline()}
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(args.seed)
    ck = load_policy(args.sft)
    vocab, tok = ck.vocab, ck.tokenizer
    ck.model.generation_config.pad_token_id = vocab.pad
    fn = reward_fn(args.reward, args.data)
    G = args.num_generations
    hists, users = train_users(args.data, (args.cycles + 1) * args.batch // G, args.seed)
    prompt_ids = [prompt_tokens(h, vocab, H, u) for h, u in zip(hists, users)]  # user token iff the vocab has them
    blocked = build_prompts(hists, vocab, H, exclude_seen=True, user_idx=users).blocked
    blocked_by_prompt = {tuple(ids): blocked[b] for b, ids in enumerate(prompt_ids)}
    texts = []
    for ids in prompt_ids:  # TRL tokenises text prompts: the text must come back as exactly these ids
        text = "".join(tok.convert_ids_to_tokens(ids))
        if tok(text=[text])["input_ids"][0] != ids:
            raise SystemExit(f"prompt does not round-trip through the tokenizer: {text[:80]!r}")
        texts.append(text)
    ds = Dataset.from_dict({"prompt": texts, "history": hists, "user_idx": users})
    counts = {"pages": 0, "empty_slots": 0, "repeated_slots": 0, "seen_slots": 0}
    rewards: list[float] = []

    def page_reward(prompts, completions, completion_ids, history, user_idx, **kw):
        pages = torch.full((len(completion_ids), K), -1, dtype=torch.long)
        for b, ids in enumerate(completion_ids):
            on_page: set[int] = set()
            seen = set(history[b])
            for k, t in enumerate(list(ids)[:K]):
                if vocab.item_offset <= t < vocab.item_offset + vocab.n_items:
                    item = t - vocab.item_offset
                    pages[b, k] = item
                    counts["repeated_slots"] += item in on_page
                    counts["seen_slots"] += item in seen
                    on_page.add(item)
            counts["empty_slots"] += int((pages[b] < 0).sum())
        counts["pages"] += len(completion_ids)
        total = fn(history, pages, user_idx=user_idx).total.tolist()
        rewards.extend(total)
        return total

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

    steps_per_rollout = MINIBATCHES * PASSES
    with tempfile.TemporaryDirectory(prefix="trl-grpo-") as out:
        cfg = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=10**6,
            per_device_train_batch_size=args.batch // MINIBATCHES, steps_per_generation=MINIBATCHES,
            num_iterations=PASSES, num_generations=G, max_completion_length=K,
            generation_kwargs={"min_new_tokens": K}, beta=KL_COEF, learning_rate=LR,
            max_steps=steps_per_rollout * (args.cycles + 1), temperature=1.0, top_k=0, disable_dropout=True,
            seed=args.seed, dataloader_num_workers=0, shuffle_dataset=False,
            gradient_checkpointing=False)  # a memory option; recomputation would only slow TRL down
        trainer = GRPOTrainer(model=ck.model, reward_funcs=page_reward, args=cfg, train_dataset=ds,
                              processing_class=tok, callbacks=[Stamp()])
        policy = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        Constraint = page_constraint(vocab, blocked_by_prompt)
        plain_generate = policy.generate

        def constrained_generate(*a, **kw):
            ids = kw.get("input_ids", a[0] if a else None)
            procs = LogitsProcessorList([Constraint(ids, kw.get("attention_mask"))])
            return plain_generate(*a, logits_processor=procs, **kw)

        policy.generate = constrained_generate
        trainer.train()
    if Constraint.calls == 0:
        raise SystemExit("TRL never called the page constraint: its generate path changed")
    measured = stamps[steps_per_rollout - 1:]  # from the end of the warm-up rollout
    ends = stamps[steps_per_rollout - 1::steps_per_rollout]
    wall = measured[-1] - measured[0]
    pages = args.batch * args.cycles
    ray_at_end = {p: c for p, c in ray_processes().items() if p not in _baseline()}
    return {"side": "trl", "method": f"TRL {__import__('trl').__version__} GRPOTrainer", "pages": pages,
            "wall_s": wall, "pages_per_s": pages / wall, "rollout_s": [b - a for a, b in zip(ends, ends[1:])],
            "optimizer_steps_per_rollout": steps_per_rollout,
            "mean_reward": sum(rewards[args.batch:]) / max(1, len(rewards[args.batch:])),
            "constraint_calls": Constraint.calls, "page_checks": counts,
            "ray_processes_at_start": len(ray_at_start), "ray_processes_at_end": len(ray_at_end),
            "threads": {"torch": torch.get_num_threads(), "layout": "one process"}}


def _baseline() -> set[int]:
    return {int(p) for p in os.environ.get("BENCH_RAY_BASELINE", "").split(",") if p}


# --------------------------------------------------------------------------- driver


def child_cmd(args, side: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", side, "--data", args.data, "--sft", args.sft,
            "--reward", args.reward, "--cycles", str(args.cycles), "--batch", str(args.batch),
            "--num-generations", str(args.num_generations), "--seed", str(args.seed)]


def measure(args, side: str, baseline: set[int]) -> dict:
    env = {**os.environ, "BENCH_RAY_BASELINE": ",".join(map(str, sorted(baseline)))}
    t0 = time.time()
    proc = subprocess.run(child_cmd(args, side), capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"[bench] {side} subprocess failed (rc {proc.returncode})")
    out = json.loads(lines[-1][len("RESULT "):])
    out["process_s"] = round(time.time() - t0, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(p)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (ours, TRL) of fresh subprocesses")
    p.add_argument("--cycles", type=int, default=3, help="measured rollouts (+1 warm-up) per subprocess")
    p.add_argument("--batch", type=int, default=64, help="pages per rollout")
    p.add_argument("--num-generations", type=int, default=4, help="TRL: pages per prompt (GRPO group, >= 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", "--smoke-test", dest="smoke", action="store_true",
                   help="1 round, 1 measured rollout of 16 pages; result to the smoke directory")
    p.add_argument("--child", choices=("ours", "trl"), help=argparse.SUPPRESS)
    args = p.parse_args()
    bench_env()
    if args.child:
        K, H = sft_prompt(args.sft)
        out = run_ours(args, K, H) if args.child == "ours" else run_trl(args, K, H)
        print("RESULT " + json.dumps(out), flush=True)
        return
    if args.smoke:
        args.repeats, args.cycles, args.batch = 1, 1, 16
    run = Run()
    K, H = prepare_inputs(args, run)

    baseline = set(ray_processes())  # Ray processes that are not this bench's (none on a quiet box)
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for r in range(args.repeats):
        for side in ("ours", "trl"):
            gone = wait_ray_gone(baseline) if side == "trl" else None
            if gone and gone["left"]:
                print(f"[bench] warning: {len(gone['left'])} Ray processes still up before TRL", flush=True)
            res = measure(args, side, baseline)
            if gone is not None:
                res["ray_before_start"] = {"waited_s": gone["waited_s"], "left": len(gone["left"]),
                                           "left_cmds": list(gone["left"].values())[:5]}
            res["round"] = r
            runs[side].append(res)
            print(f"[bench] round {r} {side}: {res['pages_per_s']:.1f} pages/s", flush=True)

    summary = {side: {"method": rs[0]["method"], **{f"pages_per_s_{k}": v
                                                    for k, v in spread([x["pages_per_s"] for x in rs]).items()}}
               for side, rs in runs.items()}
    ratio = summary["ours"]["pages_per_s_median"] / summary["trl"]["pages_per_s_median"]
    rows = [{"side": s, "median": v["pages_per_s_median"], "min": v["pages_per_s_min"], "max": v["pages_per_s_max"],
             "n": v["pages_per_s_n"]} for s, v in summary.items()]
    print(table(rows, ["side", "median", "min", "max", "n"], "{:.2f}"))
    print(f"ratio of medians ours / TRL = {ratio:.2f}x (pages/s)")
    checks = [x["page_checks"] for x in runs["trl"]]
    path = run.write("ppo_vs_trl_grpo", {
        "what": "pages/s: rlhf-ray PPO on Ray actors vs TRL GRPOTrainer in the same action space, "
                "interleaved fresh subprocesses",
        "smoke": args.smoke,
        "settings": {"batch": args.batch, "page_size": K, "max_history": H, "minibatch": args.batch // MINIBATCHES,
                     "passes": PASSES, "optimizer_steps_per_rollout": MINIBATCHES * PASSES, "kl_coef": KL_COEF,
                     "lr": LR, "trl_num_generations": args.num_generations, "measured_rollouts": args.cycles,
                     "warmup_rollouts": 1, "repeats": args.repeats, "order": "ours, trl interleaved", "seed": args.seed},
        "summary": summary, "ratio_of_medians_ours_over_trl": ratio,
        "ratio_per_round": [o["pages_per_s"] / t["pages_per_s"] for o, t in zip(runs["ours"], runs["trl"])],
        "trl_page_checks": {k: sum(c[k] for c in checks) for k in checks[0]} if checks else {},
        "runs": runs,
        "differences": {
            "critic": "ours trains a critic (GAE advantages); GRPO has none (group-relative advantages)",
            "pages_per_prompt": f"ours 1 page per user (B users per rollout); TRL num_generations="
                                f"{args.num_generations} pages per prompt (B/{args.num_generations} users per rollout)",
            "logprobs": "both sample from the restricted distribution; TRL's loss and KL use log-probs over the "
                        "whole vocabulary, ours over the restricted one",
            "kl": "ours: k1 per-slot penalty in the reward; TRL: k3 term in the loss (beta)",
            "processes": "ours: colocated Ray actors, 1 BLAS thread each; TRL: one process, all cores as torch "
                         "threads",
        },
    }, results_dir=results_dir(args.smoke))
    print(f"[bench] wrote {path}")


if __name__ == "__main__":
    main()
