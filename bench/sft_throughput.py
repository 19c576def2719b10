"""SFT training throughput (tokens/s) and MFU against an fp32 matmul peak measured in the same run.

    .venv/bin/python bench/sft_throughput.py --data DIR [--steps 20] [--threads 2] [--smoke]

The model is the shipped config's (``rlhf_ray/configs/ml-100k.yaml``: the pretrain model, the SFT
stage's batch, windows and pages), freshly initialised: throughput does not depend on the weights.
One step = ``SFTModule`` forward (next-item windows + ranked pages) + backward + AdamW.

FLOP count (forward + backward = 3 x forward; a matmul of m x n by n x p is 2 m n p):

* blocks: 6 N_block FLOPs per token that goes through them, N_block = the 2-D weights of the
  transformer blocks (attention q/k/v/out + MLP), counted from the model;
* attention scores and mixing: 12 H FLOPs per (query, key) pair per layer (QK^T and AV,
  2 H each forward);
* output projection: 6 V H FLOPs per position whose logits are computed (V = vocabulary incl.
  text tokens; the tied embedding's gradient included).

*Model FLOPs* (MFU's numerator) count only useful work:
  windows (``window_batch``; the LM is called on the whole right-padded window): blocks at real
  tokens (mask 1), causal pairs among them, the projection at the positions the next-item loss
  reads (labels != ignore);
  pages (``page_logprobs``, ``logits_to_keep = K + 1``): blocks at real prompt tokens + real
  page tokens, causal pairs among them, the projection at the page slots that hold an item (K
  per full page), the only logits the ranking loss reads.
*Executed FLOPs* (``hfu``) count what the code runs: every position of the padded tensors through
  the blocks, dense T x T attention, the projection at every window position and at the K + 1
  kept page positions.

Peak: the best of ``--peak-reps`` fp32 matmuls at each of 512^3, 1024^3 and 2048^3, with the same
torch thread count, measured before and after the timed steps in this run; the best is used.
Writes bench/results/sft_throughput.json through bench/provenance.py.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, results_dir  # noqa: E402


def matmul_peak(sizes=(512, 1024, 2048), reps: int = 5) -> dict:
    """{"gflops": best over sizes, "by_size": {n: best GFLOP/s}} of fp32 n x n matmuls."""
    by = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        by[n] = 2 * n**3 / best / 1e9
    return {"gflops": max(by.values()), "by_size": by}


def block_weights(lm) -> int:
    """Parameters of the 2-D weights inside the transformer blocks (the per-token matmuls)."""
    blocks = lm.transformer.h
    return sum(p.numel() for p in blocks.parameters() if p.dim() == 2)


def causal_pairs(n: torch.Tensor) -> int:
    """sum over rows of n (n + 1) / 2: (query, key) pairs of causal attention over n real tokens."""
    n = n.long()
    return int((n * (n + 1) // 2).sum())


def batch_flops(b: dict, n_block: int, n_layer: int, H: int, V: int, ignore: int) -> dict:
    """{"model", "executed", "tokens"} FLOPs of one SFT step on batch ``b`` (see the module docstring)."""
    model = executed = tokens = 0
    if "windows" in b:
        w = b["windows"]
        Bw, T = w["ids"].shape
        real = w["mask"].sum(dim=1)
        read = int((w["labels"] != ignore).sum())  # positions whose logits the next-item loss reads
        model += 6 * n_block * int(real.sum()) + 12 * n_layer * H * causal_pairs(real) + 6 * V * H * read
        executed += 6 * n_block * Bw * T + 12 * n_layer * H * Bw * T * T + 6 * V * H * Bw * T
        tokens += int(real.sum())
    if "pages" in b:
        pr, pages = b["pages"]["prompts"], b["pages"]["pages"]
        Bp, L = pr.input_ids.shape
        K = pages.shape[1]
        slots = pages >= 0
        real = pr.attention_mask.sum(dim=1) + slots.sum(dim=1)
        model += 6 * n_block * int(real.sum()) + 12 * n_layer * H * causal_pairs(real) + 6 * V * H * int(slots.sum())
        executed += 6 * n_block * Bp * (L + K) + 12 * n_layer * H * Bp * (L + K) ** 2 + 6 * V * H * Bp * (K + 1)
        tokens += int(real.sum())
    return {"model": model, "executed": executed, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/ml100k-prepared")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak-reps", type=int, default=5, help="matmuls per size per peak measurement")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "rlhf_ray/configs/ml-100k.yaml"))
    ap.add_argument("--out", default=None, help="result file (default bench/results/sft_throughput.json)")
    ap.add_argument("--smoke", "--smoke-test", dest="smoke", action="store_true",
                    help="3 steps, small peak; result to the smoke directory")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.peak_reps = 3, 2
    run = Run(inputs={"data": args.data, "config": args.config})
    torch.set_num_threads(args.threads)

    from rlhf_ray.pipeline import load_pipeline_config
    from rlhf_ray.stages.common import init_policy, open_data
    from rlhf_ray.stages.sft import (IGNORE, SFTModule, golden_pages, next_item_windows, page_batch,
                                     training_sequences, window_batch)

    pipe = load_pipeline_config(args.config)
    cfg = pipe["sft"].replace(model=pipe["pretrain"].model.to_dict())
    prepared = open_data(args.data)
    lm, _, vocab, _, _ = init_policy(None, cfg.model, prepared)
    module = SFTModule(lm, vocab, cfg)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    seqs = training_sequences(prepared)
    windows = next_item_windows(seqs, cfg.max_history, cfg.window_stride)
    pages = golden_pages(seqs, cfg.page_size, cfg.page_cuts, prepared.positive_threshold, random.Random(0))
    bs = cfg.train.batch_size
    per_p = max(1, len(pages) * bs // max(1, len(windows)))  # the stage's page share per step
    batches = []
    for i in range(args.steps + 2):
        w = [windows[(i * bs + j) % len(windows)] for j in range(bs)]
        p = [pages[(i * per_p + j) % len(pages)] for j in range(per_p)]
        batches.append({"windows": window_batch(w, vocab), "pages": page_batch(p, vocab, cfg.max_history)})

    peak_before = matmul_peak(reps=args.peak_reps)
    for b in batches[:2]:  # warm-up
        loss, _ = module(b)
        loss.backward()
        opt.step()
        opt.zero_grad()
    conf = lm.config
    H, L, V = conf.n_embd, conf.n_layer, conf.vocab_size
    n_block = block_weights(lm)
    totals = {"model": 0, "executed": 0, "tokens": 0}
    t0 = time.perf_counter()
    for b in batches[2:]:
        loss, _ = module(b)
        loss.backward()
        opt.step()
        opt.zero_grad()
    dt = time.perf_counter() - t0
    for b in batches[2:]:
        for k, v in batch_flops(b, n_block, L, H, V, IGNORE).items():
            totals[k] += v
    peak_after = matmul_peak(reps=args.peak_reps)
    peak = max(peak_before["gflops"], peak_after["gflops"])
    model_gflops, exec_gflops = totals["model"] / dt / 1e9, totals["executed"] / dt / 1e9
    result = {
        "what": "SFT step throughput and MFU (model FLOPs of the positions the loss uses / measured fp32 peak)",
        "smoke": args.smoke,
        "threads": args.threads, "torch_threads": torch.get_num_threads(), "steps": args.steps,
        "batch_size": bs, "page_examples_per_step": per_p, "page_size": cfg.page_size, "max_history": cfg.max_history,
        "params_total": sum(p.numel() for p in lm.parameters()), "params_block_2d": n_block, "n_layer": L,
        "hidden": H, "vocab": V, "n_items": vocab.n_items,
        "tokens": totals["tokens"], "tokens_per_s": totals["tokens"] / dt, "step_s": dt / args.steps,
        "model_flops_per_step": totals["model"] / args.steps, "executed_flops_per_step": totals["executed"] / args.steps,
        "model_gflops_per_s": model_gflops, "executed_gflops_per_s": exec_gflops,
        "matmul_peak_gflops_per_s": peak, "peak_before": peak_before, "peak_after": peak_after,
        "mfu": model_gflops / peak, "hfu": exec_gflops / peak,
    }
    out = Path(args.out) if args.out else results_dir(args.smoke) / "sft_throughput.json"
    path = run.write(out.stem, result, results_dir=out.parent)
    print(f"tokens/s {result['tokens_per_s']:,.0f}  step {dt / args.steps * 1000:.0f} ms  model {model_gflops:.2f} "
          f"GFLOP/s  executed {exec_gflops:.2f} GFLOP/s  peak {peak:.1f} GFLOP/s  MFU {result['mfu']:.1%}  "
          f"HFU {result['hfu']:.1%}  -> {path}")


if __name__ == "__main__":
    main()
