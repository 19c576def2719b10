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

OUT may be a storage URI (:mod:`rlhf_ray.storage`, e.g. ``s3://bucket/runs/ppo``): object
stores cannot rename a directory, so there the ``iter_*`` directory is written in place
(an older one of the same name deleted first) and only ``controller.json``, put last, makes
it complete; the actors publish their engine states there from their own nodes. A run
resumed on any node finds the same states.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rlhf_ray import storage
from rlhf_ray.checkpoint import atomic_dir
from rlhf_ray.jsonio import dumps

CONTROLLER = "controller.json"
LATEST = "latest"
_ITER = re.compile(r"^iter_(\d{6,})$")


def state_dir(out_dir: str | Path) -> str:
    """Where a run writing its checkpoint to ``out_dir`` keeps its resumable states (a location)."""
    return storage.sibling(storage.normalize(out_dir), ".state")


def iter_name(iteration: int) -> str:
    return f"iter_{iteration:06d}"


def read_controller(d: str) -> dict | None:
    """The controller.json of state directory ``d`` (a location), or None while it is incomplete."""
    text = storage.read_text(storage.join(d, CONTROLLER))
    try:
        return json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None


def complete(d: str | Path) -> bool:
    """A state directory is complete when its controller.json (written last) parses."""
    return read_controller(str(d)) is not None


class RunState:
    def __init__(self, root: str | Path, keep: int = 2):
        self.root = storage.normalize(root)
        self.keep = keep

    def write(self, iteration: int, write_engines: Callable[[str], None], controller: dict) -> str:
        """Write one state: ``write_engines(dir)`` (actors save there), then controller.json, then latest."""
        target = storage.join(self.root, iter_name(iteration))
        text = dumps(controller, sort_keys=True, default=str) + "\n"
        if storage.is_uri(target):
            storage.remove(target)  # controller.json goes with it: never complete while rewritten
            write_engines(target)
            storage.write_text(storage.join(target, CONTROLLER), text)
        else:
            with atomic_dir(Path(target)) as tmp:
                write_engines(str(tmp))
                storage.write_text(tmp / CONTROLLER, text)
        storage.write_text(storage.join(self.root, LATEST), iter_name(iteration))
        self._prune()
        return target

    def _complete_dirs(self) -> list[str]:
        names = [n for n in storage.listdir(self.root) if _ITER.match(n)]
        dirs = [storage.join(self.root, n) for n in sorted(names, key=lambda n: int(_ITER.match(n).group(1)))]
        return [d for d in dirs if complete(d)]

    def latest(self) -> str | None:
        """The state to resume from (a location), or None."""
        pointer = (storage.read_text(storage.join(self.root, LATEST)) or "").strip()
        if _ITER.match(pointer) and complete(storage.join(self.root, pointer)):
            return storage.join(self.root, pointer)
        dirs = self._complete_dirs()
        return dirs[-1] if dirs else None

    def _prune(self) -> None:
        for d in self._complete_dirs()[: -self.keep]:
            storage.remove(d)


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
