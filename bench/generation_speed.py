"""Page generation before vs after the KV-cache decoder: ms per page, interleaved, same inputs.

    .venv/bin/python bench/generation_speed.py --checkpoint runs/ml-100k/sft --data runs/ml-100k/data \
        [--before e17bd1a] [--batch-sizes 1,16,256] [--strategies greedy,sample,beam,eval] [--repeats 7]

* before: ``rlhf_ray/generation.py`` as it was at git revision ``--before`` (read with
  ``git show`` into a temporary module; it imports the rest of the current package), the
  decoder that ran one HF forward per slot over a DynamicCache;
* after: the current ``rlhf_ray.generation`` (prompt prefilled once, length buckets, the
  GPT-2 decode step of ``rlhf_ray.kvdecode``).

Each repeat runs every (strategy, batch size) once with each implementation, back to back,
the order alternating between repeats, on the test-split histories of the first B users.
``eval`` is what evaluation does per batch: greedy pages plus the full-catalogue ranking
(before: ``score_items`` and ``generate_pages``, the prompt twice; after: ``generate_pages``
alone, its ``first_scores``). Reported per cell: median ms/page with min/max over repeats,
the speed-up of the medians, and whether the pages were identical (same generator seed
for sampling) with the largest log-prob difference. The 1-minute load average is recorded
before every repeat (the JSON's provenance has it before and after the run).
Writes bench/results/generation_speed.json through bench/provenance.py.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, results_dir, spread, table  # noqa: E402
from provenance import ROOT, load_average  # noqa: E402

BEFORE = "e17bd1a"  # main before issue 15: the per-slot HF decoder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (its model and vocabulary)")
    p.add_argument("--data", required=True, help="prepared data dir (test-split histories are the prompts)")
    p.add_argument("--before", default=BEFORE, help="git revision of the decoder to compare against")
    p.add_argument("--batch-sizes", default="1,16,256", help="comma-separated prompts per call")
    p.add_argument("--strategies", default="greedy,sample,beam,eval", help="comma-separated: greedy, sample, "
                   "beam (4 beams), eval (greedy pages + full ranking)")
    p.add_argument("--page-size", type=int, default=10, help="K: items per page")
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats (median and spread over them)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--smoke", action="store_true", help="batch sizes 1,4, 2 repeats; to the smoke directory")
    a = p.parse_args(argv)
    if a.smoke:
        a.batch_sizes, a.repeats = "1,4", 2
    a.batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    a.strategies = a.strategies.split(",")
    unknown = set(a.strategies) - {"greedy", "sample", "beam", "eval"}
    if unknown:
        p.error(f"--strategies: unknown {sorted(unknown)}")
    return a


def module_at(rev: str, path: str, name: str):
    """``path`` as it was at git revision ``rev``, imported as module ``name``."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    tmp = Path(tempfile.mkdtemp(prefix="genbench-")) / f"{name}.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location(name, tmp)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def call(impl, strategy: str, model, vocab, prompts, k: int, seed: int):
    """Run one batch; returns (pages, logprobs) of what was decoded."""
    from rlhf_ray.config import GenerationConfig

    gen = GenerationConfig(page_size=k, strategy="greedy" if strategy == "eval" else strategy, num_beams=4)
    g = torch.Generator().manual_seed(seed)
    if strategy == "eval" and "first_scores" not in impl.Pages.__dataclass_fields__:
        impl.score_items(model, vocab, prompts)  # the old evaluation ran the prompt a second time
    return impl.generate_pages(model, vocab, prompts, gen, generator=g)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    run = Run(inputs={"checkpoint": a.checkpoint, "data": a.data})
    from rlhf_ray import generation as after
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.data.prepared import load_prepared

    before = module_at(a.before, "rlhf_ray/generation.py", "generation_before")
    impls = {"before": before, "after": after}
    ck = load_checkpoint(a.checkpoint)
    model, vocab = ck.model.eval(), ck.vocab
    hist, _, _, users = load_prepared(a.data).histories("test")
    max_history = int(ck.manifest.get("prompt", {}).get("max_history", 50))
    prompts = {b: after.build_prompts([hist[i % len(hist)] for i in range(b)], vocab, max_history,
                                      user_idx=[users[i % len(hist)] for i in range(b)])
               for b in a.batch_sizes}
    cells = [(s, b) for s in a.strategies for b in a.batch_sizes]
    times = {(s, b, n): [] for s, b in cells for n in impls}
    checks = {(s, b): {"identical_pages": True, "max_logprob_diff": 0.0} for s, b in cells}
    for s, b in cells:  # warm-up, not timed
        for impl in impls.values():
            call(impl, s, model, vocab, prompts[b], a.page_size, 0)
    loads = []
    for r in range(a.repeats):
        loads.append(load_average())
        order = list(impls) if r % 2 == 0 else list(impls)[::-1]
        for s, b in cells:
            out = {}
            for n in order:
                t0 = time.perf_counter()
                out[n] = call(impls[n], s, model, vocab, prompts[b], a.page_size, r)
                times[(s, b, n)].append((time.perf_counter() - t0) * 1000 / b)
            c = checks[(s, b)]
            c["identical_pages"] &= bool(torch.equal(out["before"].items, out["after"].items))
            diff = (out["before"].logprobs - out["after"].logprobs).abs().max().item()
            c["max_logprob_diff"] = max(c["max_logprob_diff"], diff)
        print(f"repeat {r + 1}/{a.repeats} done (load {loads[-1][:1]})", flush=True)
    rows = []
    for s, b in cells:
        sb, sa = spread(times[(s, b, "before")]), spread(times[(s, b, "after")])
        rows.append({"strategy": s, "batch": b, "before_ms_per_page": sb["median"], "after_ms_per_page": sa["median"],
                     "speedup": sb["median"] / sa["median"], "before": sb, "after": sa, **checks[(s, b)]})
    print(table(rows, ["strategy", "batch", "before_ms_per_page", "after_ms_per_page", "speedup",
                       "identical_pages", "max_logprob_diff"], fmt="{:.3g}"))
    path = run.write("generation_speed", {
        "what": "page generation ms/page, decoder at --before vs the current one, interleaved repeats",
        "smoke": a.smoke, "before_revision": a.before, "page_size": a.page_size, "threads": a.threads,
        "repeats": a.repeats, "n_items": vocab.n_items, "max_history": max_history,
        "fast_path": __import__("rlhf_ray.kvdecode", fromlist=["fast_path"]).fast_path(model),
        "load_per_repeat": loads, "results": rows,
        "median_load_1min": statistics.median(x[0] for x in loads) if loads and loads[0] else None,
    }, results_dir=results_dir(a.smoke))
    print(f"load average at start {run.load_before}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
