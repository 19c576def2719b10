"""Shared by the PPO benchmarks: inputs (train a quick SFT / reward checkpoint when missing),
the environment for Ray on loopback, result files and tables."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DATA = "/tmp/ml100k-prepared"
SFT = "/tmp/ppo-bench-sft"
REWARD = "/tmp/ppo-bench-reward"


def bench_env() -> None:
    """Ray on 127.0.0.1 without an auth token, DeepSpeed ops cached, one BLAS thread per process."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "rlhf-ray" / "torch_extensions"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "rlhf_ray.cli", *args]
    print("[bench] $ rlhf-ray " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def ensure_sft(data: str, sft: str, epochs: int = 2) -> str:
    """The SFT checkpoint, trained with the CLI when ``sft`` holds none."""
    if not (Path(sft) / "manifest.json").is_file():
        _cli("sft", "--data", data, "--out", sft, "--train.epochs", str(epochs), "--no-train.progress",
             "--no-train.tensorboard")
    return sft


def ensure_reward(data: str, sft: str, reward: str, epochs: int = 1) -> str:
    """A reward checkpoint ("rule" passes through), trained with the CLI when missing."""
    if reward == "rule" or (Path(reward) / "manifest.json").is_file():
        return reward
    _cli("reward", "--sft", sft, "--data", data, "--out", reward, "--train.epochs", str(epochs),
         "--no-train.progress", "--no-train.tensorboard")
    return reward


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_results(name: str, obj: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
    print(f"[bench] wrote {path}")
    return path


def table(rows: list[dict], cols: list[str], fmt: str = "{:.4f}") -> str:
    """A plain text table; floats formatted with ``fmt``."""
    cells = [[fmt.format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])
