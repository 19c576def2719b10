"""Checkpoint load time with the tokenizer built on first use, against building it at load.

    .venv/bin/python bench/checkpoint_load.py --checkpoints runs/ml-100k/sft,/tmp/W8/sft100k,/tmp/W8/sft1m \
        [--repeats 3] [--out bench/results/checkpoint_load.json]

What every consumer of a checkpoint pays before it can rank (a Serve replica, each PPO role,
the PPO driver reading the token layout, evaluation): ``load_checkpoint``. Its tokenizer is a
:class:`rlhf_ray.tokens.SavedTokenizer`, built on first use; before, ``load_tokenizer`` built the
Hugging Face tokenizer at once, whose construction copies the added-token table (one token per
item). Both sides run the same code, in a fresh process each (nothing cached): ``lazy`` is
``load_checkpoint`` alone, ``built`` is ``load_checkpoint`` then ``tokenizer.load()``, what a load
cost before. Per checkpoint the two alternate, ``--repeats`` times each; reported: the median
and spread of the seconds, peak RSS, and their ratio. Writes JSON through bench/provenance.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, results_dir, spread, spread_cell  # noqa: E402
from provenance import load_average  # noqa: E402

#: one measurement, in a fresh interpreter: seconds of the load (imports excluded) and peak RSS
CHILD = """
import json, resource, sys, time
import torch, transformers, tokenizers  # imports are not the load's cost
from rlhf_ray.checkpoint import load_checkpoint
t0 = time.perf_counter()
ck = load_checkpoint(sys.argv[1], verify=False)
if sys.argv[2] == "built":
    ck.tokenizer.load()
s = time.perf_counter() - t0
print(json.dumps({"s": s, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "items": ck.vocab.n_items}))
"""
MODES = ("lazy", "built")


def measure(checkpoint: str, mode: str, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", CHILD, checkpoint, mode], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", required=True, help="comma-separated checkpoint directories")
    p.add_argument("--repeats", type=int, default=3, help="loads per mode and checkpoint, the modes alternating")
    p.add_argument("--threads", type=int, default=1, help="OMP threads of each loading process")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/checkpoint_load.json)")
    a = p.parse_args(argv)
    paths = [c for c in a.checkpoints.split(",") if c]
    for c in paths:
        if not (Path(c) / "manifest.json").is_file():
            p.error(f"--checkpoints: {c} is not a checkpoint directory (no manifest.json)")
    run = Run(inputs={f"checkpoint_{i}": c for i, c in enumerate(paths)})
    rows = []
    for c in paths:
        got: dict = {m: [] for m in MODES}
        loads = []
        for r in range(a.repeats):
            for m in (MODES if r % 2 == 0 else MODES[::-1]):
                loads.append(load_average()[0])
                got[m].append(measure(c, m, a.threads))
                print(f"[load] {c} {m} repeat {r + 1}: {got[m][-1]['s']:.2f} s", flush=True)
        row = {"checkpoint": c, "items": got["lazy"][0]["items"], "load_1min": loads}
        for m in MODES:
            row[f"{m}_s"] = spread([x["s"] for x in got[m]])
            row[f"{m}_peak_rss_gb"] = spread([x["peak_rss_gb"] for x in got[m]])
        row["built_over_lazy"] = row["built_s"]["median"] / row["lazy_s"]["median"]
        rows.append(row)
    lines = ["| items | load, tokenizer built (s) | load, tokenizer on first use (s) | ratio | "
             "peak RSS GB built / lazy |", "|---|---|---|---|---|"]
    lines += [f"| {r['items']:,} | {spread_cell(r['built_s'])} | {spread_cell(r['lazy_s'])} | "
              f"x{r['built_over_lazy']:.1f} | {r['built_peak_rss_gb']['median']:.2f} / "
              f"{r['lazy_peak_rss_gb']['median']:.2f} |" for r in rows]
    markdown = "\n".join(lines)
    print(markdown)
    payload = {"what": "load_checkpoint seconds with the tokenizer built at load (before) and on first use (now)",
               "repeats": a.repeats, "threads": a.threads, "rows": rows, "markdown": markdown}
    out = Path(a.out) if a.out else results_dir(False) / "checkpoint_load.json"
    path = run.write(out.stem, payload, out.parent)
    print(f"[load] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
