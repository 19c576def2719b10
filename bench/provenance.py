"""Provenance and result files shared by every benchmark.

Every JSON in ``bench/results/`` is written through :func:`write_result`, which wraps the
benchmark's own payload with where it came from:

* ``git``: commit, whether the tree was dirty (and which files), branch, read when the
  bench *starts* (the code it measures); ``git_at_end`` too when that changed while it ran
  (a commit or an edit during a long bench), so a reader can tell;
* ``command``: the exact argv (``python bench/x.py --flag ...``) and the working directory;
* ``machine``: CPU model, cores, threads (torch, OMP/MKL env), platform, library versions;
* ``load``: the 1/5/15-minute load average when the bench started and when it finished,
  so a reader can tell a quiet run from a loaded one;
* ``inputs``: the ids of the input checkpoints (manifest stage + sha256 of the manifest)
  and data directories (fingerprint), from :func:`input_id`.

The file is written to a temporary sibling and renamed, so an interrupted bench never
leaves a half-written result. NaN / inf are not valid JSON: they are written as ``null``
(readers show them as "n/a"), never as bare ``NaN``.

    from provenance import Run
    run = Run(inputs={"sft": "runs/ml-100k/sft", "data": "runs/ml-100k/data"})
    ...
    run.write("sft_vs_peers", payload)
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rlhf_ray.jsonio import json_safe, write_json_atomic  # noqa: F401  (json_safe re-exported)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20,
                              check=True).stdout.rstrip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_info() -> dict:
    """{"commit", "dirty", "dirty_files", "branch"} of the repository the bench runs from."""
    status = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    return {"commit": _git("rev-parse", "HEAD") or None, "dirty": bool(status), "dirty_files": status[:50],
            "branch": _git("rev-parse", "--abbrev-ref", "HEAD") or None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    """CPU, threads and versions of the process that measured."""
    out: dict[str, Any] = {
        "cpu_model": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(),
        "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "env_kernels": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")},
    }
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
        # the kernels torch dispatches to (AVX2, AVX512, ...): runs on machines that differ here
        # sum floats in another order, so the same seed trains other weights (README, main job)
        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        pass
    for mod in ("ray", "transformers", "deepspeed", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001  (an optional library missing or broken is not fatal here)
            pass
    return out


def input_id(path: str | Path | None) -> dict | None:
    """An id for a checkpoint or prepared-data directory (None passes through).

    checkpoint: {"path", "kind": "checkpoint", "stage", "manifest_sha256", "content_sha256",
    "weights_sha256"}; prepared data: {"path", "kind": "data", "fingerprint"}; a plain file (a
    peer's top-100 list): {"path", "kind": "file", "sha256"}; anything else: {"path", "kind": "other"}. ``manifest_sha256`` names one export (the manifest holds its time);
    ``content_sha256`` (over the manifest's per-file hashes) and ``weights_sha256`` (the weight
    file's) are equal for two runs that wrote the same checkpoint, e.g. on another machine.
    """
    if path is None:
        return None
    p = Path(path)
    if (p / "manifest.json").is_file():
        raw = (p / "manifest.json").read_bytes()
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError:
            manifest = {}
        files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
        weights = next((files[f] for f in sorted(files) if f.endswith((".safetensors", ".bin", ".pt"))), None)
        return {"path": str(p), "kind": "checkpoint", "stage": manifest.get("stage"),
                "manifest_sha256": hashlib.sha256(raw).hexdigest(),
                "content_sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
                if files else None, "weights_sha256": weights}
    if (p / "stats.json").is_file():
        try:
            fp = json.loads((p / "stats.json").read_text()).get("fingerprint")
        except json.JSONDecodeError:
            fp = None
        return {"path": str(p), "kind": "data", "fingerprint": fp}
    if p.is_file():  # e.g. a peer's top-100 list
        return {"path": str(p), "kind": "file", "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    return {"path": str(p), "kind": "other", "exists": p.exists()}


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (no NaN) to ``path`` via a temporary sibling + rename."""
    return write_json_atomic(path, obj, sort_keys=False)


class Run:
    """Provenance of one bench invocation: create at start, :meth:`write` at the end."""

    def __init__(self, inputs: dict[str, str | Path | None] | None = None, argv: list[str] | None = None):
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.t0 = time.time()
        self.cpu0 = time.process_time()
        self.load_before = load_average()
        self.git = git_info()
        self.argv = list(sys.argv if argv is None else argv)
        self.inputs = dict(inputs or {})

    def add_input(self, name: str, path: str | Path | None) -> None:
        self.inputs[name] = path

    def provenance(self) -> dict:
        cmd = " ".join([Path(sys.executable).name, *self.argv]) if self.argv else None
        at_end = git_info()
        return {
            "git": self.git,
            **({"git_at_end": at_end} if at_end != self.git else {}),
            "command": cmd,
            "cwd": os.getcwd(),
            "started": self.started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_s": round(time.time() - self.t0, 2),
            "driver_cpu_s": round(time.process_time() - self.cpu0, 2),
            "load_before": self.load_before,
            "load_after": load_average(),
            "machine": machine(),
            "inputs": {k: input_id(v) for k, v in self.inputs.items()},
        }

    def write(self, name: str, payload: dict, results_dir: str | Path = RESULTS) -> Path:
        """``results_dir/name.json`` = payload + {"provenance": ...}; returns the path."""
        path = Path(results_dir) / f"{name}.json"
        return atomic_write_json(path, {**payload, "provenance": self.provenance()})
