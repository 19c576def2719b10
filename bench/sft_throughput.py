"""SFT training throughput (tokens/s) and MFU against a measured fp32 matmul peak.

    .venv/bin/python bench/sft_throughput.py --data /tmp/ml100k-prepared [--steps 20] [--threads 2]

Peak: the best of several 1024^3 fp32 matmuls with the same thread count.
Model FLOPs per trained token: 6 * N (forward + backward, Kaplan et al.) with N the
parameters touched per token (all non-embedding weights plus the tied output
projection, which is a (V x H) matmul per position) + attention 6 * n_layer * T * H.
Writes bench/results/sft_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/ml100k-prepared")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "rlhf_ray/configs/ml-100k.yaml"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sft_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rlhf_ray.pipeline import load_pipeline_config
    from rlhf_ray.stages.common import init_policy, open_data
    from rlhf_ray.stages.sft import (SFTModule, golden_pages, next_item_windows, page_batch, training_sequences,
                                     window_batch)

    cfg = load_pipeline_config(args.config)["sft"]
    cfg = cfg.replace(model=load_pipeline_config(args.config)["pretrain"].model.to_dict())
    prepared = open_data(args.data)
    lm, _, vocab, _, _ = init_policy(None, cfg.model, prepared)
    module = SFTModule(lm, vocab, cfg)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    seqs = training_sequences(prepared)
    windows = next_item_windows(seqs, cfg.max_history, cfg.window_stride)
    pages = golden_pages(seqs, cfg.page_size, cfg.page_cuts, prepared.positive_threshold, random.Random(0))
    bs = cfg.train.batch_size
    per_p = max(1, len(pages) * bs // max(1, len(windows)))
    batches = []
    for i in range(args.steps + 2):
        w = [windows[(i * bs + j) % len(windows)] for j in range(bs)]
        p = [pages[(i * per_p + j) % len(pages)] for j in range(per_p)]
        batches.append({"windows": window_batch(w, vocab), "pages": page_batch(p, vocab, cfg.max_history)})

    def tokens(b) -> int:
        pb = b["pages"]
        return int(b["windows"]["mask"].sum()) + int(pb["prompts"].attention_mask.sum()) + int((pb["pages"] >= 0).sum())

    for b in batches[:2]:  # warm-up
        loss, _ = module(b)
        loss.backward()
        opt.step()
        opt.zero_grad()
    n_tok, t0 = 0, time.perf_counter()
    for b in batches[2:]:
        loss, _ = module(b)
        loss.backward()
        opt.step()
        opt.zero_grad()
        n_tok += tokens(b)
    dt = time.perf_counter() - t0
    conf = lm.config
    H, L, V = conf.n_embd, conf.n_layer, conf.vocab_size
    n_block = 12 * L * H * H  # attention (4 H^2) + MLP (8 H^2) per layer
    T = cfg.max_history + 3
    flops_per_token = 6 * (n_block + V * H) + 6 * L * T * H
    tok_s = n_tok / dt
    peak = matmul_peak()
    result = {
        "threads": args.threads, "steps": args.steps, "batch_size": bs, "page_examples_per_step": per_p,
        "params_total": sum(p.numel() for p in lm.parameters()), "params_block": n_block, "vocab": V,
        "tokens_per_s": tok_s, "step_s": dt / args.steps, "model_gflops_per_s": tok_s * flops_per_token / 1e9,
        "matmul_peak_gflops_per_s": peak, "mfu": tok_s * flops_per_token / 1e9 / peak,
        "command": "python bench/sft_throughput.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"tokens/s {tok_s:,.0f}  step {dt / args.steps * 1000:.0f} ms  model {result['model_gflops_per_s']:.1f} "
          f"GFLOP/s  peak {peak:.1f} GFLOP/s  MFU {result['mfu']:.1%}  -> {out}")


if __name__ == "__main__":
    main()
