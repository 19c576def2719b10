"""A sweep as a benchmark: run (or continue) ``rlhf-ray tune`` and record its outcome with provenance.

    .venv/bin/python bench/tune_sweep.py --config tune_configs/smoke.yaml --out runs/bench/sweep-smoke
    .venv/bin/python bench/tune_sweep.py --config tune_configs/ppo.yaml --out runs/sweep-ppo
    .venv/bin/python bench/tune_sweep.py --config tune_configs/lpo.yaml --out runs/sweep-lpo

The sweep runs in this process exactly as ``rlhf-ray tune`` runs it; an ``--out`` holding a
finished or interrupted sweep is continued (finished trials are kept), so this can also
record a sweep the CLI ran: ``trials_ran`` then gives when its trials ran (UTC), which may be
before the commit this JSON records (the code of the stages a trial ran is in its checkpoints'
manifests, ``trials/<id>/<stage>/manifest.json``). Writes ``bench/results/sweep_<name>.json``: the trial table,
the selection (validation only), the one test evaluation of the selected trial and of the
default config (95% bootstrap intervals over test users, paired difference), the wall time
of this invocation and the summed wall time of the trials, the CPU budget, and the Pareto front.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from provenance import Run  # noqa: E402


def table_markdown(doc: dict) -> str:
    """The README block: the selected trial against the default on test, and the budget."""
    test = doc.get("test")
    where = Path(doc["sweep_file"])
    where = where.relative_to(BENCH.parent) if where.is_relative_to(BENCH.parent) else where
    ran = doc.get("trials_ran") or {}
    lines = [f"Sweep `{doc['name']}` (`{where}`): {doc['trials']} trials ({doc['completed']} completed, "
             f"{doc['stopped']} stopped early by the scheduler, {doc['errors']} errors); search space "
             + ", ".join(f"`{k}` {v}" for k, v in doc["space"].items()) + f"; objective "
             + " + ".join(f"{w:g} x {k}" for k, w in (doc["objective"].get("weights") or
                                                     {doc["objective"]["metric"]: 1.0}).items())
             + f" on validation. Trials took {doc['trial_wall_s']:.0f} s in all"
             + (f" and ran from {ran['first']} to {ran['last']}." if ran.get("first") else "."), ""]
    best = doc.get("best")
    if best:
        knobs = ", ".join(f"{k} = {best[k]:.4g}" if isinstance(best[k], float) else f"{k} = {best[k]}"
                          for k in doc["space"])
        d = doc.get("default_objective")
        lines += [f"Selected on validation: trial `{best['trial']}` ({knobs}), validation objective "
                  f"{best['objective']:.4f}; the default config's: {'n/a' if d is None else f'{d:.4f}'}.", ""]
    if test:
        from rlhf_ray.tune.results import test_markdown

        lines.append(test_markdown(test).strip().replace("## Test split", "Test split", 1))
    return "\n".join(lines)


def trial_times(out: Path) -> dict:
    """When the trials ran (first and last result of any trial): a continued sweep's trials may
    predate this invocation and its commit, and the JSON says so."""
    import json

    stamps = []
    for f in (out / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        stamps += [r["timestamp"] for r in lines if "timestamp" in r]
    if not stamps:
        return {"first": None, "last": None}
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return {"first": time.strftime(fmt, time.gmtime(min(stamps))), "last": time.strftime(fmt, time.gmtime(max(stamps)))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="sweep YAML (tune_configs/)")
    p.add_argument("--out", required=True, help="sweep directory (continued when it exists)")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the local Ray")
    p.add_argument("--name", default=None, help="results file name (default sweep_<sweep name>)")
    args = p.parse_args(argv)

    from rlhf_ray.tune.spec import load_sweep
    from rlhf_ray.tune.sweep import run_sweep

    sweep = load_sweep(args.config)
    out = Path(args.out).expanduser().resolve()
    run = Run(inputs={"data": out / "shared" / "data", **{s: out / "shared" / s for s in sweep.cfg.prepare
                                                         if s != "data"}})
    t0 = time.time()
    summary = run_sweep(sweep, out, num_cpus=args.num_cpus)
    table = pd.read_csv(out / "results.csv")
    default = table[table["default"] & (table["status"] == "completed")]
    doc = {**summary, "invocation_s": time.time() - t0, "trial_wall_s": float(table["wall_s"].fillna(0).sum()),
           "trials_ran": trial_times(out),
           "default_objective": float(default["objective"].iloc[0]) if len(default) else None,
           "table": table.drop(columns=["curve"], errors="ignore").to_dict(orient="records"),
           "results_md": (out / "results.md").read_text()}
    doc["table_markdown"] = table_markdown(doc)
    path = run.write(args.name or f"sweep_{sweep.cfg.name}", doc)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
