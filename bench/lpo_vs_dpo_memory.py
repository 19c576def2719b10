"""Peak memory and step time of one LPO step vs the in-repo DPO / S-DPO and TRL's DPOTrainer.

    python bench/lpo_vs_dpo_memory.py --sft DIR --data DIR [--steps 20] [--repeats 3] [--smoke]

Every variant trains the same GPT-2 (the SFT checkpoint's weights and tokenizer) with AdamW
(lr 1e-4, grad-norm clip 1) in fp32 on CPU, on the same batch size B and the same prompts (the
last ``max_history`` items of a user's history, then ``<page>``). Variants:

Loss isolated (in-repo trainer, same model, batch and N negatives; one forward of B prompts
scores every item at the first page slot, so the rows differ only in the loss and the reference):

* ``lpo``:      LPO4Rec as shipped: listwise softmax over 1 positive + N negatives, no reference.
* ``lpo_ref``:  the same loss on s = log pi - log pi_ref (a frozen reference: + 1 no-grad forward).
* ``dpo_ref``:  the in-repo DPO loss (reference). N negatives are drawn by the same sampler as the
                other rows (Gumbel-top-N); the pairwise DPO loss reads the first draw, which is a
                sample of the same distribution. (``rlhf-ray lpo --loss dpo`` draws only that one;
                drawing N here keeps the sampler's cost equal.)
* ``sdpo_ref``: the in-repo S-DPO loss (reference), N negatives.

TRL 1.16 ``DPOTrainer`` on (prompt, chosen = the positive item, rejected = one head negative),
whose policy forwards chosen and rejected as two sequences (2B per step):

* ``trl_dpo``:               defaults: a reference copy forwards both sequences every step.
* ``trl_dpo_precompute``:    ``precompute_ref_log_probs=True``: reference log-probs computed once
                             before training (its time is ``setup_s``), no reference kept.
* ``trl_dpo_precompute_gc``: the same + ``gradient_checkpointing=True``.

Each variant runs in its own subprocess (``OMP_NUM_THREADS=--threads``) so its peak RSS
(``ru_maxrss``, imports and model included) is its own; ``step_peak_mib`` = peak minus the RSS
just before the first step (what training adds). Step time (forward, backward, clip, AdamW step) is
the median wall time of the steps after ``--warmup``. ``--repeats`` rounds run interleaved (every
variant once per round); the JSON reports, per variant, the median, min and max over rounds of
the step-time median and of the peak memory.

What still differs between in-repo and TRL rows: TRL's DPO is pairwise (1 negative per
example) and scores two full sequences per example, ours scores N negatives from one forward of
the prompt; TRL's Trainer adds its own bookkeeping (dataloader, callbacks, logging).
Needs ``trl`` (``pip install -e ".[peers]"``). Writes bench/results/lpo_vs_dpo_memory.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, results_dir, spread  # noqa: E402

VARIANTS = ("lpo", "lpo_ref", "dpo_ref", "sdpo_ref", "trl_dpo", "trl_dpo_precompute", "trl_dpo_precompute_gc")
OURS = {"lpo": ("lpo", False), "lpo_ref": ("lpo", True), "dpo_ref": ("dpo", True), "sdpo_ref": ("sdpo", True)}
TRL = {"trl_dpo": {}, "trl_dpo_precompute": {"precompute_ref_log_probs": True},
       "trl_dpo_precompute_gc": {"precompute_ref_log_probs": True, "gradient_checkpointing": True}}


def rss_mib() -> float:
    """Current resident set size of this process, MiB (from /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def examples(args, n: int):
    """``n`` (history, positive, one uniform head negative) examples from ml-100k training sequences,
    from users with at least N never-seen head items (as the LPO stage filters them)."""
    import numpy as np
    import torch

    from rlhf_ray.sampling import candidate_mask
    from rlhf_ray.stages import lpo
    from rlhf_ray.stages.common import open_data

    prepared = open_data(args.data)
    pool = candidate_mask(torch.tensor(np.asarray(prepared.is_tail, dtype=bool)), "head").numpy()
    seqs = lpo.enough_negatives(lpo.training_sequences(prepared), pool, args.negatives)
    ex = lpo.lpo_examples(seqs, prepared.positive_threshold, 4, random.Random(0))
    if len(ex) < n:
        raise SystemExit(f"only {len(ex)} examples for {n} = batch x steps: lower --steps or --batch-size")
    ex = ex[:n]
    rng = np.random.default_rng(0)
    head = np.flatnonzero(pool)
    negs = [int(rng.choice(np.setdiff1d(head, e.seen))) for e in ex]
    return prepared, ex, negs


# --------------------------------------------------------------------------- one variant per subprocess


def run_rlhf_ray(args, variant: str) -> dict:
    import torch

    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.config import LPOConfig
    from rlhf_ray.stages import lpo

    torch.manual_seed(0)
    loss, reference = OURS[variant]
    common = {"reference": reference, "n_negatives": args.negatives, "max_history": args.max_history,
              "train": {"batch_size": args.batch_size}}
    cfg = LPOConfig.from_dict({"loss": loss, **common})
    draw_cfg = LPOConfig.from_dict({"loss": "sdpo", **common})  # same sampler, pool, tau; N negatives
    prepared, ex, _ = examples(args, args.batch_size * (args.steps + args.warmup))
    ck = load_checkpoint(args.sft)
    ref = lpo.frozen_copy(ck.model) if cfg.uses_reference else None

    class DrawN(lpo.LPOModule):
        """Draws N negatives for every loss (dpo reads the first), so the sampler's work is equal."""

        def sample_negatives(self, scores, batch):
            own, self.cfg = self.cfg, draw_cfg
            try:
                return super().sample_negatives(scores, batch)
            finally:
                self.cfg = own

    module = DrawN(ck.model, ck.vocab, cfg, prepared.is_tail, prepared.popularity, ref).train()
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
    seq_len = max(int(b["prompts"].input_ids.shape[1]) + 1 for b in batches)  # prompt + the scored slot
    return {"times": times[args.warmup:], "rss_before_mib": before, "seq_len": seq_len, "setup_s": 0.0,
            "sequences_per_step": B, "negatives_drawn": draw_cfg.negatives,
            "negatives_in_loss": 1 if loss == "dpo" else args.negatives, "reference": cfg.uses_reference}


def run_trl(args, variant: str) -> dict:
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
        ids = prompt_tokens(e.history, vocab, args.max_history, e.user)
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
                         max_steps=len(ex) // args.batch_size, learning_rate=1e-4, beta=1.0, logging_steps=10**6,
                         save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, max_length=None,
                         seed=0, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01,
                         **TRL[variant])
        t0 = time.perf_counter()
        trainer = DPOTrainer(model=ck.model, args=conf, train_dataset=data, processing_class=tok, callbacks=[Timer()])
        setup_s = time.perf_counter() - t0  # tokenisation (+ reference log-probs when precomputed)
        d = trainer.train_dataset
        seq_len = max(len(p) + max(len(c), len(r))  # padded width of the longest (chosen | rejected) sequence
                      for p, c, r in zip(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"]))
        before = rss_mib()
        trainer.train()
    return {"times": times[args.warmup:], "rss_before_mib": before, "seq_len": seq_len, "setup_s": setup_s,
            "sequences_per_step": 2 * args.batch_size, "negatives_drawn": 1, "negatives_in_loss": 1,
            "reference": not TRL[variant].get("precompute_ref_log_probs", False)}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    out = run_trl(args, args.child) if args.child in TRL else run_rlhf_ray(args, args.child)
    out["peak_rss_mib"] = peak_rss_mib()
    out["torch_threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(out))


# --------------------------------------------------------------------------- driver


def measure(args, variant: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--sft", args.sft, "--data", args.data,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--negatives", str(args.negatives), "--max-history", str(args.max_history), "--threads", str(args.threads)]
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
    p.add_argument("--threads", type=int, default=1, help="OMP / torch threads per measured subprocess")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (every variant once per round)")
    p.add_argument("--out", default=None, help="result file (default bench/results/lpo_vs_dpo_memory.json)")
    p.add_argument("--smoke", "--smoke-test", dest="smoke", action="store_true",
                   help="1 round, 2 timed steps of batch 16; result to the smoke directory")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if not args.sft:
        p.error("--sft DIR is required (an SFT checkpoint: the main job's runs/ml-100k/sft)")
    if args.smoke:
        args.repeats, args.steps, args.warmup, args.batch_size = 1, 2, 1, 16
    run = Run(inputs={"sft": args.sft, "data": args.data})
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.repeats):  # interleaved, so drift in the machine's load hits every variant alike
        for v in variants:
            res = measure(args, v)
            res["round"] = r
            runs[v].append(res)
            print(f"[bench] round {r} {v}: {res['step_ms_median']:.1f} ms/step, peak {res['peak_rss_mib']:.0f} MiB",
                  flush=True)
    results = {}
    for v, rs in runs.items():
        first = rs[0]
        results[v] = {k: first[k] for k in ("sequences_per_step", "seq_len", "negatives_drawn", "negatives_in_loss",
                                             "reference")}
        for key in ("step_ms_median", "peak_rss_mib", "step_peak_mib", "rss_before_mib", "setup_s"):
            s = spread([x[key] for x in rs])
            results[v].update({f"{key}": s["median"], f"{key}_min": s["min"], f"{key}_max": s["max"]})
        results[v]["repeats"] = len(rs)
    for base in ("trl_dpo", "dpo_ref"):
        if base in results:
            for v, r in results.items():
                r[f"step_time_ratio_vs_{base}"] = r["step_ms_median"] / results[base]["step_ms_median"]
                r[f"peak_rss_ratio_vs_{base}"] = r["peak_rss_mib"] / results[base]["peak_rss_mib"]
    path = run.write(Path(args.out).stem if args.out else "lpo_vs_dpo_memory", {
        "what": "peak RSS and step time: LPO vs in-repo DPO / S-DPO (loss isolated) vs TRL DPOTrainer, "
                "each variant in its own subprocess, interleaved rounds",
        "smoke": args.smoke,
        "settings": {k: getattr(args, k) for k in ("batch_size", "steps", "warmup", "negatives", "max_history",
                                                   "threads", "repeats")},
        "results": results, "runs": runs,
        "differences": {
            "in_repo_rows": "same model, batch, prompts, N negatives drawn; only the loss and the reference differ",
            "trl_rows": "pairwise DPO (1 negative per example); policy (and reference unless precomputed) forward "
                        "chosen and rejected as two full sequences (2B per step); Trainer bookkeeping included",
        },
    }, results_dir=Path(args.out).parent if args.out else results_dir(args.smoke))
    print(f"{'variant':22s} {'negs':>4s} {'seqs':>5s} {'len':>4s} {'step ms (min-max)':>22s} {'peak MiB':>9s} "
          f"{'step +MiB':>9s} {'setup s':>7s}")
    for v, r in results.items():
        print(f"{v:22s} {r['negatives_in_loss']:4d} {r['sequences_per_step']:5d} {r['seq_len']:4d} "
              f"{r['step_ms_median']:8.1f} ({r['step_ms_median_min']:5.1f}-{r['step_ms_median_max']:5.1f}) "
              f"{r['peak_rss_mib']:9.0f} {r['step_peak_mib']:9.0f} {r['setup_s']:7.1f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
