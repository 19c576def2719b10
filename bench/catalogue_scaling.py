"""Cost as the catalogue grows: the same users and interactions over 1.7k .. 1M items.

    .venv/bin/python bench/catalogue_scaling.py [--sizes 1700,10000,100000,1000000] [--sampled 4096]
    .venv/bin/python bench/catalogue_scaling.py --smoke-test          # tiny sizes, tiny model (the test)

Data: the synthetic generator with fixed users (``--users``, 2000) and about ``--interactions``
(100k) interactions; only the item count changes. Prepared with ``k_core: 0`` and
``keep_cold_items: true``, so the model's catalogue is exactly the requested size (with 100k
interactions over 1M Zipf-popular items most items are never interacted with: they stay in
the catalogue, are ranked and can be decoded, as in a real shop).

Per size, each phase runs in its own subprocess (so each peak RSS is that phase's own,
read with ``os.wait4`` even when the child dies), under an address-space limit
(``--mem-limit-gb``, RLIMIT_AS) so a phase that does not fit fails with the allocation that
did not fit instead of pushing the shared box into the OOM killer:

* ``prepare``: generate + ``rlhf-ray data prepare`` (build + write Parquet): seconds, peak RSS;
* ``infer``: the stage's own policy initialisation (BPE + one token per item + GPT-2: seconds),
  then greedy page generation (``generation.generate_pages``, the KV-cache decoder of
  ``kvdecode``) on ``--gen-batch`` prompts: ms per page (median of ``--repeats``), the same with
  ``shortlist: --shortlist`` (slots after the first scored on the first slot's best M items only;
  repeats interleaved with the whole-catalogue ones; the share of pages equal to the
  whole-catalogue pages is recorded, but with fresh weights it says nothing of a trained
  model's, which ``bench/shortlist_quality.py`` measures), and the
  evaluation (``evaluation.evaluate_full``: full-catalogue ranking + page + metrics) on
  ``--eval-users`` validation users: ms per user;
* ``sft_full`` / ``sft_sampled``: ``SFTModule`` steps (next-item windows + ranked pages, the
  shipped ml-100k SFT batch) + AdamW, after 2 warm-up steps: seconds per step (forward +
  backward and optimizer separately) and peak RSS; ``sft_sampled`` with
  ``sampled_softmax: --sampled`` (popularity negatives, log-Q correction), for sizes
  >= ``--sampled-from``. These children build the vocabulary layout from a BPE trained on at
  most 20k item texts (the same layout and model as the stage's, without the tokenizer's
  per-item cost, which ``infer`` measures).

Model: the shipped ml-100k backbone (2 layers x 128, 4 heads), fresh weights (cost does not
depend on them). Torch threads: ``--threads``. The box is shared: every phase records the
load average when it started. Writes bench/results/catalogue_scaling.json through
bench/provenance.py and the plot docs/img/catalogue_scaling.png (``--smoke-test``: both to
the smoke results directory unless ``--out`` / ``--plot`` say otherwise).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from ppo_common import Run, bench_env, results_dir  # noqa: E402

CONFIG = ROOT / "rlhf_ray" / "configs" / "ml-100k.yaml"
SMOKE_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 96, "dropout": 0.0, "text_vocab_size": 300}
PHASES = ("prepare", "infer", "sft_full", "sft_sampled")
_where = "start"  # what the child is doing (reported when it fails)


# --------------------------------------------------------------------------- child side


def _at(what: str) -> None:
    global _where
    _where = what
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def _gb(kb: float) -> float:
    return round(kb / 1024 / 1024, 3)


def _rss_gb() -> dict:
    """Current and peak resident set size of this process (GB), from /proc."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out["rss_gb" if line.startswith("VmRSS") else "peak_gb"] = _gb(float(line.split()[1]))
    return out


def _data_dir(work: Path, size: int) -> Path:
    return work / f"data-{size}"


def _configs(args):
    from rlhf_ray.config import DataConfig, ModelConfig
    from rlhf_ray.pipeline import load_pipeline_config

    pipe = load_pipeline_config(str(CONFIG))
    model = ModelConfig.from_dict(SMOKE_MODEL) if args.smoke else pipe["pretrain"].model
    sft = pipe["sft"].replace(model=model.to_dict())
    data = DataConfig(dataset="synthetic", synthetic_users=args.users, synthetic_items=args.size,
                      synthetic_interactions=max(1, round(args.interactions / args.users)), k_core=0,
                      keep_cold_items=True, seed=0)
    return data, model, sft


def child_prepare(args) -> dict:
    from rlhf_ray.data.prepare import build, write
    from rlhf_ray.data.sources import load_raw

    data_cfg, _, _ = _configs(args)
    out = _data_dir(Path(args.work), args.size)
    _at("prepare: generate")
    t0 = time.perf_counter()
    raw = load_raw(data_cfg)
    t1 = time.perf_counter()
    _at("prepare: build")
    built = build(raw, data_cfg, log=lambda s: None)
    _at("prepare: write")
    stats = write(built, out)
    t2 = time.perf_counter()
    return {"generate_s": t1 - t0, "build_write_s": t2 - t1, "prepare_s": t2 - t0,
            "raw": stats["raw"], "prepared": stats["prepared"], "data": str(out)}


def _light_policy(prepared, model_cfg):
    """The stage's vocabulary layout and GPT-2 without adding one tokenizer token per item: the BPE
    is trained on at most 20k item texts, item (no user) tokens follow it, as in ``train_tokenizer``."""
    from rlhf_ray.model import build_model
    from rlhf_ray.tokens import meta_texts, train_tokenizer

    items = prepared.items.iloc[:20_000]
    texts = meta_texts(items["title"].astype(str).tolist(), [list(c) for c in items["categories"]])
    _, base = train_tokenizer(texts, n_items=0, vocab_size=model_cfg.text_vocab_size)
    vocab = dataclasses.replace(base, n_items=prepared.n_items, user_offset=base.n_text + prepared.n_items)
    return build_model(model_cfg, vocab), vocab


def child_infer(args) -> dict:
    import torch

    from rlhf_ray.config import GenerationConfig
    from rlhf_ray.evaluation import evaluate_full
    from rlhf_ray.generation import build_prompts, generate_pages
    from rlhf_ray.stages.common import init_policy, open_data

    _, model_cfg, sft_cfg = _configs(args)
    _at("infer: load data")
    prepared = open_data(_data_dir(Path(args.work), args.size))
    import tokenizers  # noqa: F401  (imports are not the init's cost)
    import transformers  # noqa: F401
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: F401

    _at("infer: init policy (tokenizer with one token per item + GPT-2)")
    t0 = time.perf_counter()
    lm, _, vocab, _, _ = init_policy(None, model_cfg, prepared)
    init_s = time.perf_counter() - t0
    after_init = _rss_gb()
    lm.eval()
    gen = GenerationConfig(max_history=sft_cfg.max_history, page_size=sft_cfg.page_size, strategy="greedy")
    hist = prepared.histories("valid").histories[: args.gen_batch]
    short = gen.replace(shortlist=args.shortlist) if args.shortlist else None
    prompt_s, decode_s, short_s = [], [], []
    for r in range(args.repeats + 1):  # the first is a warm-up
        _at(f"infer: greedy pages, repeat {r}")
        t0 = time.perf_counter()
        prompts = build_prompts(hist, vocab, gen.max_history, exclude_seen=True)
        t1 = time.perf_counter()
        pages = generate_pages(lm, vocab, prompts, gen)
        t2 = time.perf_counter()
        if short is not None:
            _at(f"infer: greedy pages with shortlist {args.shortlist}, repeat {r}")
            listed = generate_pages(lm, vocab, build_prompts(hist, vocab, gen.max_history, exclude_seen=True), short)
        t3 = time.perf_counter()
        if r:
            prompt_s.append(t1 - t0)
            decode_s.append(t2 - t1)
            short_s.append(t3 - t2)
    assert (pages.items >= 0).all(), "a page slot found no allowed item"
    _at("infer: evaluate (full ranking + pages + metrics)")
    t0 = time.perf_counter()
    ev = evaluate_full(lm, vocab, prepared, "valid", gen, max_users=args.eval_users, batch_size=args.gen_batch)
    eval_s = time.perf_counter() - t0
    n_eval = int(ev.metrics["users"])
    B = len(hist)
    total = [a + b for a, b in zip(prompt_s, decode_s)]
    return {"init_s": init_s, "rss_after_init_gb": after_init.get("rss_gb"), "gen_batch": B,
            "page_ms": 1000 * statistics.median(total) / B, "page_ms_runs": [1000 * t / B for t in total],
            "prompt_ms_per_page": 1000 * statistics.median(prompt_s) / B,
            "decode_ms_per_page": 1000 * statistics.median(decode_s) / B,
            **({"shortlist": args.shortlist, "page_ms_shortlist": 1000 * statistics.median(short_s) / B,
                "page_ms_shortlist_runs": [1000 * t / B for t in short_s],
                "shortlist_same_pages": float((listed.items == pages.items).all(dim=1).float().mean())}
               if short is not None else {}),
            "eval_users": n_eval, "eval_s": eval_s, "eval_ms_per_user": 1000 * eval_s / max(1, n_eval),
            "eval_ndcg@10": ev.metrics.get("ndcg@10"), "n_items": vocab.n_items,
            "params": sum(p.numel() for p in lm.parameters()), "torch_threads": torch.get_num_threads()}


def child_sft(args, sampled: int) -> dict:
    import torch

    from rlhf_ray.sampling import shared_negatives
    from rlhf_ray.stages.common import open_data
    from rlhf_ray.stages.sft import (SFTModule, golden_pages, next_item_windows, page_batch, sampler_weights,
                                     training_sequences, window_batch)

    _, model_cfg, cfg = _configs(args)
    cfg = cfg.replace(sampled_softmax=sampled)
    _at("sft: load data")
    prepared = open_data(_data_dir(Path(args.work), args.size))
    _at("sft: build model")
    torch.manual_seed(0)
    lm, vocab = _light_policy(prepared, model_cfg)
    module = SFTModule(lm, vocab, cfg)
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.01)
    _at("sft: build batches")
    seqs = training_sequences(prepared)
    windows = next_item_windows(seqs, cfg.max_history, cfg.window_stride)
    pages = golden_pages(seqs, cfg.page_size, cfg.page_cuts, prepared.positive_threshold, random.Random(0))
    bs = cfg.train.batch_size
    per_p = max(1, len(pages) * bs // max(1, len(windows)))  # the stage's page share per step
    q = sampler_weights(cfg, prepared) if sampled else None
    gen = torch.Generator().manual_seed(0)
    batches = []
    for i in range(args.steps + 2):
        w = [windows[(i * bs + j) % len(windows)] for j in range(bs)]
        p = [pages[(i * per_p + j) % len(pages)] for j in range(per_p)]
        b = {"windows": window_batch(w, vocab), "pages": page_batch(p, vocab, cfg.max_history)}
        if sampled:
            items, corr = shared_negatives(sampled, vocab.n_items, q, gen)
            b["negatives"] = {"items": items, "log_correction": corr}
        batches.append(b)
    before = _rss_gb()
    fwd_bwd, optim, losses = [], [], []
    for i, b in enumerate(batches):
        _at(f"sft: step {i} forward + backward" + (" (warm-up)" if i < 2 else ""))
        t0 = time.perf_counter()
        loss, _ = module(b)
        loss.backward()
        t1 = time.perf_counter()
        _at(f"sft: step {i} clip + AdamW")
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        losses.append(float(loss.detach()))
        if i >= 2:
            fwd_bwd.append(t1 - t0)
            optim.append(t2 - t1)
    steps = [a + b for a, b in zip(fwd_bwd, optim)]
    return {"sampled_softmax": sampled, "sampler": cfg.sampled_softmax_sampler if sampled else None,
            "batch_size": bs, "page_examples_per_step": per_p, "steps": len(steps),
            "step_s": statistics.median(steps), "step_s_runs": steps,
            "fwd_bwd_s": statistics.median(fwd_bwd), "optimizer_s": statistics.median(optim),
            "rss_before_steps_gb": before.get("rss_gb"), "losses": losses, "n_items": vocab.n_items,
            "params": sum(p.numel() for p in lm.parameters()), "torch_threads": torch.get_num_threads()}


def child_main(args) -> int:
    """Run one phase; print one JSON line (result or the failure and where it happened)."""
    if args.child != "prepare":  # the data phase's RSS is the data's own, without torch
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    try:
        if args.child == "prepare":
            res = child_prepare(args)
        elif args.child == "infer":
            res = child_infer(args)
        else:
            res = child_sft(args, args.sampled if args.child == "sft_sampled" else 0)
        res = {"ok": True, **res}
    except (Exception, MemoryError) as e:  # noqa: BLE001  (reported with where it happened)
        frames = traceback.extract_tb(e.__traceback__)[-4:]
        res = {"ok": False, "where": _where, "error": f"{type(e).__name__}: {str(e)[:400]}",
               "frames": [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames]}
    res.update({"wall_s": time.perf_counter() - t0, "load_at_start": load, **_rss_gb()})
    print("RESULT " + json.dumps(res), flush=True)
    return 0 if res["ok"] else 3


# --------------------------------------------------------------------------- parent side


def run_phase(args, phase: str, size: int) -> dict:
    """One child process; its result, with its peak RSS from the kernel (``wait4``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--size", str(size), "--work",
           args.work, "--users", str(args.users), "--interactions", str(args.interactions), "--steps",
           str(args.steps), "--sampled", str(args.sampled), "--gen-batch", str(args.gen_batch), "--eval-users",
           str(args.eval_users), "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--shortlist", str(args.shortlist)]
    if args.smoke:
        cmd.append("--smoke-test")
    limit = int(args.mem_limit_gb * 1024 ** 3)

    def limits():
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    print(f"[scaling] items={size:,} {phase} ...", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, preexec_fn=limits, env=os.environ.copy())
        timed_out = False
        deadline = time.time() + args.timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                os.killpg(p.pid, 9)
                timed_out = True
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.2)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("RESULT ")]
        err_tail = err.read().splitlines()[-6:]
    res = json.loads(lines[-1][len("RESULT "):]) if lines else {"ok": False}
    res["child_peak_rss_gb"] = _gb(usage.ru_maxrss)
    res["returncode"] = p.returncode
    res.setdefault("wall_s", time.perf_counter() - t0)
    if not lines:
        last = next((ln for ln in reversed(err_tail) if ln.startswith("[")), "")
        res["where"] = last.split("] ", 1)[-1] if last else "unknown"
        res["error"] = (f"timed out after {args.timeout} s" if timed_out
                        else f"exited with {p.returncode} without a result")
        res["stderr_tail"] = err_tail
    res["memory_limit_gb"] = args.mem_limit_gb
    print(f"[scaling] items={size:,} {phase}: " + (f"ok in {res['wall_s']:.1f} s, peak {res['child_peak_rss_gb']} GB"
          if res.get("ok") else f"FAILED at {res.get('where')}: {res.get('error')}"), flush=True)
    return res


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    lines = ["| items | prepare s | prepare peak GB | init s | page ms | page ms (shortlist) | eval ms/user | "
             "infer peak GB | SFT step s (full) | SFT peak GB (full) | SFT step s (sampled) | SFT peak GB (sampled) "
             "| load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(ph: dict | None, key: str, spec: str) -> str:
        if ph is None:
            return "-"
        if not ph.get("ok"):
            return "failed" if key != "child_peak_rss_gb" else _fmt(ph.get(key), spec)
        return _fmt(ph.get(key), spec)

    for r in rows:
        pr, inf, full, samp = (r.get(k) for k in PHASES)
        lines.append(f"| {r['items']:,} | {cell(pr, 'prepare_s', '.1f')} | {cell(pr, 'child_peak_rss_gb', '.2f')} | "
                     f"{cell(inf, 'init_s', '.2f')} | {cell(inf, 'page_ms', '.2f')} | "
                     f"{cell(inf, 'page_ms_shortlist', '.2f')} | {cell(inf, 'eval_ms_per_user', '.1f')} | "
                     f"{cell(inf, 'child_peak_rss_gb', '.2f')} | "
                     f"{cell(full, 'step_s', '.3f')} | {cell(full, 'child_peak_rss_gb', '.2f')} | "
                     f"{cell(samp, 'step_s', '.3f')} | {cell(samp, 'child_peak_rss_gb', '.2f')} | {load_range(r)} |")
    lines.append("\nload: the 1-minute load average when this size's phases started (min-max; 2 cores, shared). "
                 "page ms (shortlist): the same greedy pages with `shortlist` set (the settings' value), "
                 "repeats interleaved with the whole-catalogue ones.")
    return "\n".join(lines)


def load_range(row: dict) -> str:
    loads = [row[k]["load_at_start"][0] for k in PHASES if row.get(k) and row[k].get("load_at_start")]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "n/a"


def failures(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        for k in PHASES:
            ph = r.get(k)
            if ph is not None and not ph.get("ok"):
                inner = " -> ".join(ph.get("frames") or [])
                out.append(f"{r['items']:,} items, {k}: {ph.get('error')} (at: {ph.get('where')}"
                           + (f", in {inner}" if inner else "")
                           + f"; limit {ph.get('memory_limit_gb')} GB address space, "
                           f"peak RSS {ph.get('child_peak_rss_gb')} GB)")
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    series_t = [("prepare", "prepare_s", "prepare (s)"), ("infer", "page_ms", "greedy page (ms)"),
                ("infer", "page_ms_shortlist", "greedy page, shortlist (ms)"),
                ("infer", "eval_ms_per_user", "evaluation (ms/user)"), ("sft_full", "step_s", "SFT step, full (s)"),
                ("sft_sampled", "step_s", "SFT step, sampled (s)"), ("infer", "init_s", "policy init (s)")]
    for phase, key, label in series_t:
        pts = [(r["items"], r[phase][key]) for r in rows if r.get(phase) and r[phase].get("ok")]
        if pts:
            ax_t.plot(*zip(*pts), marker="o", label=label)
    for phase, label in (("prepare", "prepare"), ("infer", "init + generate + eval"), ("sft_full", "SFT full"),
                         ("sft_sampled", "SFT sampled")):
        pts = [(r["items"], r[phase]["child_peak_rss_gb"]) for r in rows if r.get(phase) and r[phase].get("ok")]
        if pts:
            ax_m.plot(*zip(*pts), marker="o", label=label)
        bad = [(r["items"], r[phase]["memory_limit_gb"]) for r in rows if r.get(phase) and not r[phase].get("ok")]
        if bad:  # drawn at the limit it could not stay under
            ax_m.scatter(*zip(*bad), marker="x", s=90, color="black", zorder=5)
            ax_m.annotate(f"{label}: out of memory", bad[0], textcoords="offset points", xytext=(-8, -14),
                          ha="right", fontsize=7)
    limits = {ph["memory_limit_gb"] for r in rows for k in PHASES if (ph := r.get(k)) and ph.get("memory_limit_gb")}
    for lim in limits:
        ax_m.axhline(lim, color="grey", ls="--", lw=1)
        ax_m.text(rows[0]["items"], lim, " address-space limit per phase", fontsize=7, va="bottom", color="grey")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    xs = [r["items"] for r in rows]
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    for ax, ylab in ((ax_t, "time (log)"), (ax_m, "peak RSS, GB (log); x = ran out")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("catalogue items")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if len(xs) > 1:  # a slope-1 guide: cost proportional to items
        ax_t.plot([xs[0], xs[-1]], [1e-2, 1e-2 * xs[-1] / xs[0]], color="grey", ls=":", lw=1)
        ax_t.text(xs[-1], 1e-2 * xs[-1] / xs[0], " ~ items", color="grey", fontsize=7, va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def _title(users: int, interactions: int, load: list, threads: int) -> str:
    return (f"{users} users, ~{interactions:,} interactions; load avg at start {load}; {threads} torch thread(s); "
            f"each phase its own process")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1700,10000,100000,1000000", help="comma-separated catalogue sizes")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--interactions", type=int, default=100_000, help="about this many interactions in total")
    ap.add_argument("--steps", type=int, default=5, help="timed SFT steps (after 2 warm-up steps)")
    ap.add_argument("--sampled", type=int, default=4096, help="sampled_softmax negatives for sft_sampled")
    ap.add_argument("--sampled-from", type=int, default=10_000, help="run sft_sampled from this size on")
    ap.add_argument("--gen-batch", type=int, default=64, help="prompts per generation / evaluation batch")
    ap.add_argument("--eval-users", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="timed page-generation repeats (after a warm-up)")
    ap.add_argument("--shortlist", type=int, default=256,
                    help="also time greedy pages with GenerationConfig.shortlist = this (0 = do not)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every phase")
    ap.add_argument("--mem-limit-gb", type=float, default=10.0, help="address-space limit per phase (RLIMIT_AS)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per phase")
    ap.add_argument("--work", default=None, help="where prepared data goes (default: a temporary directory)")
    ap.add_argument("--out", default=None, help="result JSON (default bench/results/catalogue_scaling.json)")
    ap.add_argument("--plot", default=None, help="plot (default docs/img/catalogue_scaling.png)")
    ap.add_argument("--smoke-test", dest="smoke", action="store_true",
                    help="tiny sizes, users and model, 1 step: checks the plumbing (results to the smoke dir)")
    ap.add_argument("--replot", metavar="JSON", help="only draw the plot of an existing result file")
    ap.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    bench_env()
    if args.child:
        return child_main(args)
    if args.replot:
        doc = json.loads(Path(args.replot).read_text())
        png = Path(args.plot) if args.plot else ROOT / "docs" / "img" / "catalogue_scaling.png"
        plot(doc["rows"], png, _title(doc["users"], doc["interactions_target"],
                                      doc["provenance"]["load_before"], doc["settings"]["threads"]))
        print(f"-> {png}")
        return 0
    if args.smoke:
        args.users, args.interactions, args.steps, args.sampled = 40, 800, 1, 16
        args.gen_batch, args.eval_users, args.repeats, args.sampled_from = 4, 8, 1, 0
        args.shortlist = min(args.shortlist, 16) if args.shortlist else 0
        if args.sizes == ap.get_default("sizes"):
            args.sizes = "60,240"
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    run = Run()
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="catalogue-scaling-")
        args.work = tmp.name
    rows = []
    try:
        for size in sizes:
            row: dict = {"items": size}
            row["prepare"] = run_phase(args, "prepare", size)
            if row["prepare"].get("ok"):
                row["infer"] = run_phase(args, "infer", size)
                row["sft_full"] = run_phase(args, "sft_full", size)
                if size >= args.sampled_from:
                    row["sft_sampled"] = run_phase(args, "sft_sampled", size)
            rows.append(row)
    finally:
        if tmp is not None:
            tmp.cleanup()
    md = table(rows)
    fails = failures(rows)
    first, last = rows[0], rows[-1]
    result = {
        "what": "cost vs catalogue size at fixed users/interactions: prepare, policy init, greedy page, "
                "evaluation, SFT step (full and sampled softmax); each phase a subprocess with its own peak RSS",
        "smoke": args.smoke, "sizes": sizes, "users": args.users, "interactions_target": args.interactions,
        "settings": {k: getattr(args, k) for k in ("steps", "sampled", "sampled_from", "gen_batch", "eval_users",
                                                   "repeats", "threads", "mem_limit_gb", "timeout", "shortlist")},
        "model": SMOKE_MODEL if args.smoke else "rlhf_ray/configs/ml-100k.yaml pretrain.model",
        "rows": rows, "failures": fails, "table_markdown": md + ("\n\n" + "\n".join(f"* {f}" for f in fails)
                                                                 if fails else ""),
        "growth": {"items_ratio": last["items"] / first["items"]},
    }
    for phase, key in (("prepare", "prepare_s"), ("infer", "page_ms"), ("infer", "eval_ms_per_user"),
                       ("sft_full", "step_s"), ("sft_sampled", "step_s")):
        a, b = first.get(phase) or {}, last.get(phase) or {}
        if a.get("ok") and b.get("ok") and a.get(key):
            result["growth"][f"{phase}.{key}"] = b[key] / a[key]
    out = Path(args.out) if args.out else results_dir(args.smoke) / "catalogue_scaling.json"
    path = run.write(out.stem, result, results_dir=out.parent)
    png = Path(args.plot) if args.plot else (results_dir(True) / "catalogue_scaling.png" if args.smoke
                                            else ROOT / "docs" / "img" / "catalogue_scaling.png")
    plot(rows, png, _title(args.users, args.interactions, run.load_before, args.threads))
    print(md)
    for f in fails:
        print("  " + f)
    print(f"-> {path}\n-> {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
