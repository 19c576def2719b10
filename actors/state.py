"""Resumable PPO state in ``OUT.state`` (beside the checkpoint ``OUT``, which is replaced whole):

    OUT.state/iter_000004/policy/        the policy engine's state (DeepSpeed's own checkpoint, or state.pt)
    OUT.state/iter_000004/critic/        the critic engine's state
    OUT.state/iter_000004/controller.json  iteration, data position, KL controller, monitor, RNG states, history
    OUT.state/latest                     "iter_000004", written last

An ``iter_*`` directory is built in a hidden temp sibling and renamed into place
(:func:`rlhf_ray.checkpoint.atomic_dir`), with ``controller.json`` written last
inside it, so a half-written state never carries an ``iter_*`` name; ``latest``
is replaced atomically after the rename. Resume takes ``latest`` if it names a
complete directory, else the newest complete ``iter_*``.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rlhf_ray.checkpoint import atomic_dir, write_json_atomic

CONTROLLER = "controller.json"
LATEST = "latest"
_ITER = re.compile(r"^iter_(\d{6,})$")


def state_dir(out_dir: str | Path) -> Path:
    """Where a run writing its checkpoint to ``out_dir`` keeps its resumable states."""
    out = Path(out_dir)
    return out.parent / f"{out.name}.state"


def iter_name(iteration: int) -> str:
    return f"iter_{iteration:06d}"


def complete(d: Path) -> bool:
    """A state directory is complete when its controller.json (written last) parses."""
    try:
        json.loads((d / CONTROLLER).read_text())
        return True
    except (OSError, json.JSONDecodeError):
        return False


class RunState:
    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def write(self, iteration: int, write_engines: Callable[[Path], None], controller: dict) -> Path:
        """Write one state: ``write_engines(tmp_dir)`` (actors save there), then controller.json, rename, latest."""
        target = self.root / iter_name(iteration)
        with atomic_dir(target) as tmp:
            write_engines(tmp)
            write_json_atomic(tmp / CONTROLLER, controller)
        tmp_latest = self.root / f".{LATEST}.tmp-{os.getpid()}"
        tmp_latest.write_text(target.name)
        os.replace(tmp_latest, self.root / LATEST)
        self._prune()
        return target

    def _complete_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        dirs = [d for d in self.root.iterdir() if d.is_dir() and _ITER.match(d.name) and complete(d)]
        return sorted(dirs, key=lambda d: int(_ITER.match(d.name).group(1)))

    def latest(self) -> Path | None:
        """The state to resume from, or None."""
        pointer = self.root / LATEST
        if pointer.is_file():
            d = self.root / pointer.read_text().strip()
            if _ITER.match(d.name) and d.is_dir() and complete(d):
                return d
        dirs = self._complete_dirs()
        return dirs[-1] if dirs else None

    def _prune(self) -> None:
        for d in self._complete_dirs()[: -self.keep]:
            shutil.rmtree(d, ignore_errors=True)


def rng_state() -> dict:
    """The driver's Python, NumPy and torch RNG states as JSON-able lists."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state().tolist()}


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
