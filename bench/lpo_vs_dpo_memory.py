"""Peak memory and step time: one LPO step (1 positive vs N negatives, one forward) vs TRL's DPOTrainer.

    python bench/lpo_vs_dpo_memory.py --sft /tmp/lpo-bench/sft --data /tmp/ml100k-prepared [--steps 20]

Both sides train the same GPT-2 (the SFT checkpoint's weights and tokenizer) with
AdamW in fp32 on CPU, on the same batch size and the same prompts (the last
``max_history`` items of a user's history, then ``<page>``), each in its own
subprocess so that peak RSS is clean:

* ``lpo``:   rlhf-ray's LPOModule, N negatives (default 16), no reference model:
             one forward of B x (L+1) tokens scores the positive and every negative.
* ``lpo_ref``: the same with a frozen reference (s = log pi - log pi_ref): + 1 no-grad forward.
* ``sdpo_ref``: rlhf-ray's S-DPO loss (N negatives, reference), same single-forward scoring.
* ``trl_dpo``: ``trl.DPOTrainer`` on (prompt, chosen = positive item, rejected = 1 negative):
             policy forwards chosen and rejected (2B sequences) and a reference copy does the same.

Peak RSS is ``ru_maxrss`` of the subprocess (imports and model included) and
``peak - rss_before_training`` (what the steps themselves add); the largest over
repeats. Step time (forward, backward, clip, AdamW step) is the median wall time
of the steps after ``--warmup``; each variant runs ``--repeats`` times,
interleaved, and the fastest median is kept (the box may be shared). Needs ``trl`` (``pip install -e ".[peers]"``).
Writes ``bench/results/lpo_vs_dpo_memory.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "lpo_vs_dpo_memory.json"


def rss_mib() -> float:
    """Current resident set size of this process, MiB (from /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def examples(args, n: int):
    """``n`` (history, positive, one uniform head negative) triples from ml-100k training sequences."""
    import numpy as np

    from rlhf_ray.stages import lpo
    from rlhf_ray.stages.common import open_data

    prepared = open_data(args.data)
    seqs = lpo.training_sequences(prepared)
    ex = lpo.lpo_examples(seqs, prepared.positive_threshold, 4, random.Random(0))[:n]
    rng = np.random.default_rng(0)
    head = np.flatnonzero(~prepared.is_tail)
    negs = []
    for e in ex:
        allowed = np.setdiff1d(head, e.seen)
        negs.append(int(rng.choice(allowed)))
    return prepared, ex, negs


# --------------------------------------------------------------------------- one side per subprocess


def run_rlhf_ray(args, variant: str) -> dict:
    import torch

    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.config import LPOConfig
    from rlhf_ray.stages import lpo

    torch.manual_seed(0)
    loss = "sdpo" if variant == "sdpo_ref" else "lpo"
    cfg = LPOConfig.from_dict({"loss": loss, "reference": variant != "lpo", "n_negatives": args.negatives,
                               "max_history": args.max_history, "train": {"batch_size": args.batch_size}})
    prepared, ex, _ = examples(args, args.batch_size * (args.steps + args.warmup))
    ck = load_checkpoint(args.sft)
    ref = lpo.frozen_copy(ck.model) if cfg.uses_reference else None
    module = lpo.LPOModule(ck.model, ck.vocab, cfg, prepared.is_tail, prepared.popularity, ref).train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    B = args.batch_size
    batches = [lpo.example_batch(ex[i * B:(i + 1) * B], ck.vocab, args.max_history, prepared.is_tail)
               for i in range(args.steps + args.warmup)]
    before = rss_mib()
    times = []
    for batch in batches:
        t = time.perf_counter()
        value, _ = module(batch)
        value.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)  # as TRL's Trainer (max_grad_norm=1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    seq_len = max(int(b["prompts"].input_ids.shape[1]) + 1 for b in batches)  # prompt + the positive
    return {"times": times[args.warmup:], "rss_before_mib": before, "seq_len": seq_len,
            "sequences_per_step": B, "negatives": cfg.negatives}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.generation import prompt_tokens

    torch.manual_seed(0)
    n = args.batch_size * (args.steps + args.warmup)
    prepared, ex, negs = examples(args, n)
    ck = load_checkpoint(args.sft)
    tok, vocab = ck.tokenizer, ck.vocab
    name = tok.convert_ids_to_tokens
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for e, neg in zip(ex, negs):
        ids = prompt_tokens(e.history, vocab, args.max_history)
        rows["prompt"].append("".join(name(ids)))
        assert tok(rows["prompt"][-1], add_special_tokens=False)["input_ids"] == ids  # one token per item
        rows["chosen"].append(name(vocab.item_token(e.positive)))
        rows["rejected"].append(name(vocab.item_token(neg)))
    data = Dataset.from_dict(rows)
    times, state = [], {}

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            state["t"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - state["t"])

    with tempfile.TemporaryDirectory() as tmp:
        conf = DPOConfig(output_dir=tmp, per_device_train_batch_size=args.batch_size,
                         max_steps=len(ex) // args.batch_size,
                         learning_rate=1e-4, beta=1.0, logging_steps=10**6, save_strategy="no", report_to=[],
                         use_cpu=True, dataloader_num_workers=0, max_length=None, seed=0, lr_scheduler_type="constant",
                         warmup_steps=0, weight_decay=0.01)
        trainer = DPOTrainer(model=ck.model, args=conf, train_dataset=data, processing_class=tok, callbacks=[Timer()])
        d = trainer.train_dataset
        seq_len = max(len(p) + max(len(c), len(r))  # padded width of the longest (chosen | rejected) sequence
                      for p, c, r in zip(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"]))
        before = rss_mib()
        trainer.train()
    return {"times": times[args.warmup:], "rss_before_mib": before, "seq_len": seq_len,
            "sequences_per_step": 2 * args.batch_size, "negatives": 1}


def child(args) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = run_trl(args) if args.child == "trl_dpo" else run_rlhf_ray(args, args.child)
    out["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(out))


# --------------------------------------------------------------------------- driver


VARIANTS = ("lpo", "lpo_ref", "sdpo_ref", "trl_dpo")


def measure(args, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--sft", args.sft, "--data", args.data,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--negatives", str(args.negatives), "--max-history", str(args.max_history)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    r = json.loads(lines[-1][len("RESULT "):])
    t = r.pop("times")
    r.update(step_ms_median=1000 * statistics.median(t), step_ms_mean=1000 * statistics.mean(t), steps=len(t),
             step_peak_mib=r["peak_rss_mib"] - r["rss_before_mib"])
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft", required=False, help="SFT checkpoint (model + tokenizer/)")
    p.add_argument("--data", default="/tmp/ml100k-prepared")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--negatives", type=int, default=16)
    p.add_argument("--max-history", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per measured subprocess")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeats", type=int, default=2, help="subprocesses per variant; the fastest median is kept")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if not args.sft:
        p.error("--sft DIR is required (an SFT checkpoint, e.g. from bench/lpo_ml100k.py)")
    variants = args.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):  # interleaved, so load from other processes hits every variant alike
        for v in variants:
            runs[v].append(measure(args, v))
    results = {}
    for v, rs in runs.items():
        best = min(rs, key=lambda r: r["step_ms_median"])  # the least disturbed repeat
        results[v] = {**best, "step_ms_medians": [r["step_ms_median"] for r in rs],
                      "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                      "step_peak_mib": max(r["step_peak_mib"] for r in rs)}
    base = results.get("trl_dpo")
    if base:
        for v, r in results.items():
            r["peak_rss_ratio_vs_trl"] = r["peak_rss_mib"] / base["peak_rss_mib"]
            r["step_peak_ratio_vs_trl"] = r["step_peak_mib"] / base["step_peak_mib"]
            r["step_time_ratio_vs_trl"] = r["step_ms_median"] / base["step_ms_median"]
    report = {"setup": {k: getattr(args, k) for k in ("sft", "data", "batch_size", "steps", "warmup", "negatives",
                                                      "max_history", "threads", "repeats")},
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'variant':10s} {'negs':>4s} {'seqs/step':>9s} {'len':>4s} {'step ms':>8s} {'peak MiB':>9s} "
          f"{'step +MiB':>9s} {'time x':>7s} {'peak x':>7s} {'+MiB x':>7s}")
    nan = float("nan")
    for v, r in results.items():
        print(f"{v:10s} {r['negatives']:4d} {r['sequences_per_step']:9d} {r['seq_len']:4d} {r['step_ms_median']:8.1f} "
              f"{r['peak_rss_mib']:9.0f} {r['step_peak_mib']:9.0f} {r.get('step_time_ratio_vs_trl', nan):7.2f} "
              f"{r.get('peak_rss_ratio_vs_trl', nan):7.2f} {r.get('step_peak_ratio_vs_trl', nan):7.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
