"""What the controller process itself takes out of and puts into the Ray object store.

    ledger = Ledger()
    values = ledger.get(refs)            # ray.get, counted: the bytes deserialised here
    ref = ledger.put(batch)              # ray.put, counted
    relay = ledger.drain()               # totals since the last drain, then start over

Every ``ray.get`` and ``ray.put`` the PPO controller makes goes through one ledger (the role
groups' :meth:`~actors.group.ModelGroup.get` and the controller's own calls), so an iteration
can say what the driver held. The sizes are Ray's own: the serialised size of each object as the
object store records it (``ray.experimental.get_object_locations``), looked up once per call.
Each fetched or put value is also walked for tensors and arrays (dicts, lists, tuples and
dataclasses looked into), so a test can assert that no per-token tensor or B x catalogue mask
reaches the driver, whatever the sizes of a tiny test run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch


@dataclass
class Relay:
    """What the driver fetched and put between two :meth:`Ledger.drain` calls."""

    get_bytes: int = 0  # serialised bytes of the objects ray.get() here (each object once)
    get_objects: int = 0
    put_bytes: int = 0  # serialised bytes of the objects ray.put() here
    put_objects: int = 0
    tensors: list = field(default_factory=list)  # ("get" | "put", shape, dtype) of every tensor / array inside

    def metrics(self, prefix: str = "perf/driver_") -> dict[str, float]:
        """The totals as iteration metrics (``perf/driver_get_bytes``, ...)."""
        return {f"{prefix}get_bytes": float(self.get_bytes), f"{prefix}get_objects": float(self.get_objects),
                f"{prefix}put_bytes": float(self.put_bytes), f"{prefix}put_objects": float(self.put_objects)}

    def shapes(self, direction: str) -> list[tuple]:
        """Shapes of the tensors fetched (``"get"``) or put (``"put"``)."""
        return [s for d, s, _ in self.tensors if d == direction]


def tensors_in(value: Any, depth: int = 0) -> list[tuple[tuple, str]]:
    """(shape, dtype) of every tensor / array in ``value`` (into dicts, lists, tuples, dataclasses;
    a list of plain scalars is not walked item by item)."""
    if isinstance(value, torch.Tensor):
        return [(tuple(value.shape), str(value.dtype))]
    if isinstance(value, np.ndarray):
        return [(tuple(value.shape), str(value.dtype))]
    if depth > 8:
        return []
    if isinstance(value, dict):
        parts = list(value.values())
    elif isinstance(value, (list, tuple)):
        parts = list(value)
        if parts and not isinstance(parts[0], (torch.Tensor, np.ndarray, dict, list, tuple)) \
                and not dataclasses.is_dataclass(parts[0]):
            return []
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = [getattr(value, f.name) for f in dataclasses.fields(value)]
    else:
        return []
    return [t for p in parts for t in tensors_in(p, depth + 1)]


def object_sizes(refs: Sequence) -> list[int]:
    """Ray's serialised size of each object (0 where Ray does not know it)."""
    import ray

    if not refs:
        return []
    where = ray.experimental.get_object_locations(list(refs))
    return [int((where.get(r) or {}).get("object_size") or 0) for r in refs]


class Ledger:
    def __init__(self):
        self._relay = Relay()
        self._seen: set = set()  # ids of the objects counted (ids, not refs: nothing is kept alive here)

    def record_get(self, refs: Sequence, values: Sequence) -> None:
        """Count ``values`` that the caller fetched with ``ray.get(refs)`` (same order)."""
        new = [(r, v) for r, v in zip(refs, values) if r.binary() not in self._seen]
        if not new:
            return
        self._seen.update(r.binary() for r, _ in new)
        self._relay.get_bytes += sum(object_sizes([r for r, _ in new]))
        self._relay.get_objects += len(new)
        self._relay.tensors += [("get", s, d) for _, v in new for s, d in tensors_in(v)]

    def get(self, refs, timeout: float | None = None):
        """``ray.get(refs, timeout=timeout)`` (one ref or a list), counted."""
        import ray

        one = not isinstance(refs, (list, tuple))
        values = ray.get(refs, timeout=timeout)
        self.record_get([refs] if one else refs, [values] if one else values)
        return values

    def put(self, value: Any):
        """``ray.put(value)``, counted."""
        import ray

        ref = ray.put(value)
        self._relay.put_bytes += sum(object_sizes([ref]))
        self._relay.put_objects += 1
        self._relay.tensors += [("put", s, d) for s, d in tensors_in(value)]
        return ref

    def drain(self) -> Relay:
        """What was counted since the last drain; the count starts over."""
        out, self._relay, self._seen = self._relay, Relay(), set()
        return out
