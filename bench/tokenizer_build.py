"""Building the stage tokenizer (BPE + one token per item) before and after the construction order changed.

    .venv/bin/python bench/tokenizer_build.py [--items 100000,1000000] [--before a96c6ac] [--repeats 3]

What the first stage of a pipeline (and ``bench/catalogue_scaling.py``'s policy init) pays once:
:func:`rlhf_ray.tokens.train_tokenizer`. ``before``: ``rlhf_ray/tokens.py`` as it was at git revision
``--before`` (read with ``git show`` into a temporary module), which added the item tokens to the
``tokenizers`` object and then wrapped it, so transformers deep-copied the added-token table;
``after``: the current module, which wraps first and adds the tokens to the wrapper. Each build
runs in a fresh process on the same synthetic catalogue text (2000 titles) and is saved; per item
count the two alternate ``--repeats`` times each. Reported: median and spread of the seconds, the
ratio, and whether the two saved tokenizer directories are byte-identical (same ids, same files).
Writes JSON through bench/provenance.py.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, results_dir, spread, spread_cell  # noqa: E402
from provenance import ROOT, load_average  # noqa: E402

BEFORE = "a96c6ac"  # main before the construction order changed

#: one build in a fresh interpreter: argv = module file (or "current"), items, output dir
CHILD = """
import importlib.util, json, sys, time
import transformers, tokenizers  # imports are not the build's cost
if sys.argv[1] == "current":
    from rlhf_ray import tokens
else:
    spec = importlib.util.spec_from_file_location("tokens_before", sys.argv[1])
    tokens = importlib.util.module_from_spec(spec)
    sys.modules["tokens_before"] = tokens
    spec.loader.exec_module(tokens)
texts = [f"Movie {i} ({1950 + i % 70}) | Drama, Comedy" for i in range(2000)]
t0 = time.perf_counter()
hf, vocab = tokens.train_tokenizer(texts, n_items=int(sys.argv[2]))
s = time.perf_counter() - t0
hf.save_pretrained(sys.argv[3])
print(json.dumps({"s": s, "size": len(hf)}))
"""


def build(module: str, items: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", CHILD, module, str(items), str(out)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"build with {module} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(filecmp.cmp(a / n, b / n, shallow=False)
                                                                  for n in names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", default="100000,1000000", help="comma-separated catalogue sizes")
    p.add_argument("--before", default=BEFORE, help="git revision of rlhf_ray/tokens.py to compare against")
    p.add_argument("--repeats", type=int, default=3, help="builds per side and size, the sides alternating")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/tokenizer_build.json)")
    a = p.parse_args(argv)
    try:
        sizes = [int(x) for x in a.items.split(",") if x]
    except ValueError:
        p.error(f"--items: comma-separated integers, got {a.items!r}")
    if not sizes or min(sizes) < 1 or a.repeats < 1:
        p.error("--items: at least one size >= 1; --repeats: at least 1")
    src = subprocess.run(["git", "show", f"{a.before}:rlhf_ray/tokens.py"], capture_output=True, text=True, cwd=ROOT)
    if src.returncode != 0:
        p.error(f"--before {a.before}: {src.stderr.strip()}")
    run = Run()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tokbuild-") as tmp:
        old = Path(tmp) / "tokens_before.py"
        old.write_text(src.stdout)
        sides = {"before": str(old), "after": "current"}
        for n in sizes:
            got: dict = {k: [] for k in sides}
            loads = []
            for r in range(a.repeats):
                for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                    loads.append(load_average()[0])
                    got[side].append(build(sides[side], n, Path(tmp) / f"{side}-{n}"))
                    print(f"[tokenizer] {n} items {side} repeat {r + 1}: {got[side][-1]['s']:.2f} s", flush=True)
            identical = same_files(Path(tmp) / f"before-{n}", Path(tmp) / f"after-{n}")
            row = {"items": n, "before_s": spread([x["s"] for x in got["before"]]),
                   "after_s": spread([x["s"] for x in got["after"]]), "identical_files": identical,
                   "size": got["after"][0]["size"], "load_1min": loads}
            row["speedup"] = row["before_s"]["median"] / row["after_s"]["median"]
            rows.append(row)
    lines = ["| items | build s, before [min, max] | build s, after [min, max] | speed-up | saved files identical |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['items']:,} | {spread_cell(r['before_s'])} | {spread_cell(r['after_s'])} | "
              f"x{r['speedup']:.1f} | {'yes' if r['identical_files'] else 'NO'} |" for r in rows]
    lines.append(f"\nMedian [min, max] of {a.repeats} builds per side, each in a fresh process, the sides alternating; "
                 f"before = `rlhf_ray/tokens.py` at `{a.before}`.")
    markdown = "\n".join(lines)
    print(markdown)
    out = Path(a.out) if a.out else results_dir(False) / "tokenizer_build.json"
    path = run.write(out.stem, {"before_revision": a.before, "repeats": a.repeats, "rows": rows,
                                "markdown": markdown}, out.parent)
    print(f"[tokenizer] wrote {path}")
    return 0 if all(r["identical_files"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
