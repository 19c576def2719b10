"""Shared by the benchmarks: inputs (train a quick SFT / reward checkpoint when missing), the
environment for Ray on loopback, Ray process bookkeeping, where results go, and tables.

Results are written through :mod:`provenance` (``Run.write``): git commit, command, threads,
CPU model, load before/after and input ids travel with every JSON. A ``--smoke`` run writes to
``SMOKE_RESULTS`` (outside the repository) so it never replaces a real result.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
SMOKE_RESULTS = Path(os.environ.get("RLHF_RAY_SMOKE_RESULTS", "/tmp/rlhf-ray-bench-smoke"))
DATA = "/tmp/ml100k-prepared"
SFT = "/tmp/ppo-bench-sft"
REWARD = "/tmp/ppo-bench-reward"

if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
from provenance import Run  # noqa: E402,F401  (re-exported for the benches)


def bench_env() -> None:
    """Ray on 127.0.0.1 without an auth token, DeepSpeed ops cached, one BLAS thread per process."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "rlhf-ray" / "torch_extensions"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def results_dir(smoke: bool) -> Path:
    """bench/results for real runs, SMOKE_RESULTS for ``--smoke`` runs."""
    return SMOKE_RESULTS if smoke else RESULTS


def _cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "rlhf_ray.cli", *args]
    print("[bench] $ rlhf-ray " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def ensure_sft(data: str, sft: str, epochs: int = 2, max_steps: int = 0) -> str:
    """The SFT checkpoint, trained with the CLI when ``sft`` holds none (``max_steps`` > 0 caps it)."""
    if not (Path(sft) / "manifest.json").is_file():
        extra = ["--train.max-steps", str(max_steps)] if max_steps else []
        _cli("sft", "--data", data, "--out", sft, "--train.epochs", str(epochs), "--no-train.progress",
             "--no-train.tensorboard", *extra)
    return sft


def ensure_reward(data: str, sft: str, reward: str, epochs: int = 1, max_steps: int = 0) -> str:
    """A reward checkpoint ("rule" passes through), trained with the CLI when missing."""
    if reward == "rule" or (Path(reward) / "manifest.json").is_file():
        return reward
    extra = ["--train.max-steps", str(max_steps)] if max_steps else []
    _cli("reward", "--sft", sft, "--data", data, "--out", reward, "--train.epochs", str(epochs),
         "--no-train.progress", "--no-train.tensorboard", *extra)
    return reward


def add_input_args(p, reward_help: str = "reward checkpoint dir (trained if missing) or 'rule'") -> None:
    """``--data``, ``--sft``, ``--reward``: the inputs every PPO bench takes."""
    p.add_argument("--data", default=DATA)
    p.add_argument("--sft", default=SFT)
    p.add_argument("--reward", default=REWARD, help=reward_help)


def sft_prompt(sft: str) -> tuple[int, int]:
    """(page_size K, max_history H) of the prompt the SFT checkpoint was trained with."""
    import json

    cfg = json.loads((Path(sft) / "manifest.json").read_text())["config"]
    return int(cfg["page_size"]), int(cfg["max_history"])


def prepare_inputs(args, run) -> tuple[int, int]:
    """The SFT and reward checkpoints (trained with the CLI when missing), recorded as ``run``'s
    inputs; returns the SFT prompt's (K, H)."""
    ensure_sft(args.data, args.sft)
    args.reward = ensure_reward(args.data, args.sft, args.reward)
    for name in ("data", "sft", "reward"):
        run.add_input(name, None if getattr(args, name) == "rule" else getattr(args, name))
    return sft_prompt(args.sft)


# --------------------------------------------------------------------------- Ray processes

RAY_MARKERS = ("raylet", "gcs_server", "ray::", "ray/dashboard", "ray/_private", "ray_client_server",
               "default_worker.py", "plasma_store")


def ray_processes() -> dict[int, str]:
    """{pid: command line} of every process on this machine that belongs to Ray (from /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmd and any(m in cmd for m in RAY_MARKERS):
            out[int(d.name)] = cmd[:200]
    return out


def wait_ray_gone(baseline: set[int], timeout_s: float = 60.0) -> dict:
    """Wait until no Ray process other than the ``baseline`` pids (present before the bench) is left.

    Returns {"waited_s", "left": {pid: cmd} still alive at the deadline (empty = clean),
    "others": count of baseline Ray processes (not this bench's)}."""
    t0 = time.time()
    while True:
        extra = {p: c for p, c in ray_processes().items() if p not in baseline}
        if not extra or time.time() - t0 > timeout_s:
            return {"waited_s": round(time.time() - t0, 2), "left": extra, "others": len(baseline)}
        time.sleep(0.5)


# --------------------------------------------------------------------------- numbers and tables


def spread(xs: list[float]) -> dict:
    """{"median", "min", "max", "n", "values"} of repeated measurements (None when empty)."""
    import statistics

    xs = [float(x) for x in xs]
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs), "values": xs}


def spread_cell(s: dict, fmt: str = ".2f") -> str:
    """'median [min, max]' of a :func:`spread`, for a markdown table cell."""
    return f"{s['median']:{fmt}} [{s['min']:{fmt}}, {s['max']:{fmt}}]"


def table(rows: list[dict], cols: list[str], fmt: str = "{:.4f}") -> str:
    """A plain text table; floats formatted with ``fmt``."""
    cells = [[fmt.format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])
