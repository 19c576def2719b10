"""Row selection, splitting and concatenation of batches, whatever they hold, and batches
left in the Ray object store (:class:`Sharded`).

A *batch* is a tensor or numpy array (rows = dim 0), a list (rows = items), a
dataclass or tuple of batches (every field split the same way; ``None``, plain
scalars and row-less dataclasses such as a ``RewardMix`` are carried along unchanged).
:class:`rlhf_ray.generation.Prompts` and the role I/O of :mod:`actors.experience` are
batches, so one function shards them for the ranks of a group and picks PPO minibatches.

A :class:`Sharded` batch is a list of ObjectRefs, one per consecutive block of rows (what a
group's ranks returned, or one ``ray.put``). A group that receives one hands each rank a
:class:`RowSlice` (references + row ranges, a few bytes); the rank fetches and slices its rows
itself (:func:`resolve`), so data goes from role to role without passing through the driver.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch


def rows(batch: Any) -> int | None:
    """Number of rows of ``batch`` (None when it holds nothing row-shaped)."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return int(batch.shape[0])
    if isinstance(batch, list):
        return len(batch)
    parts = _parts(batch)
    for p in parts:
        n = rows(p)
        if n is not None:
            return n
    return None


def _parts(batch: Any) -> list:
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    if isinstance(batch, tuple):
        return list(batch)
    return []


def take(batch: Any, idx: torch.Tensor | Sequence[int]) -> Any:
    """The rows ``idx`` of ``batch`` (same structure)."""
    if isinstance(batch, torch.Tensor):
        return batch[torch.as_tensor(idx, dtype=torch.long, device=batch.device)]
    if isinstance(batch, np.ndarray):
        return batch[np.asarray(idx, dtype=np.int64)]
    if isinstance(batch, list):
        return [batch[int(i)] for i in idx]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: take(getattr(batch, f.name), idx)
                                             for f in dataclasses.fields(batch) if f.init})
    if isinstance(batch, tuple):
        return tuple(take(x, idx) for x in batch)
    return batch  # None, scalars: shared by every row


def bounds(total: int, n: int, equal: bool = False) -> list[int]:
    """Row boundaries of ``n`` contiguous shards of ``total`` rows (``equal``: same size or an error)."""
    if equal and total % n:
        raise ValueError(f"a batch of {total} rows does not split into {n} equal shards")
    b = np.linspace(0, total, n + 1).round().astype(int) if not equal else np.arange(0, total + 1, total // n)
    return [int(x) for x in b]


def split(batch: Any, n: int, equal: bool = False) -> list:
    """``n`` contiguous shards of ``batch``; ``equal``: every shard the same size (else an error)."""
    total = rows(batch)
    if total is None:
        raise ValueError(f"cannot split a {type(batch).__name__}: it holds no rows")
    b = bounds(total, n, equal)
    return [take(batch, range(b[i], b[i + 1])) for i in range(n)]


def concat(parts: Sequence[Any]) -> Any:
    """Inverse of :func:`split`: tensors along dim 0, lists joined, dicts/dataclasses field by field."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts), dim=0)
    if isinstance(first, np.ndarray):
        return np.concatenate(list(parts), axis=0)
    if isinstance(first, list):
        return [x for p in parts for x in p]
    if isinstance(first, dict):
        return {k: concat([p[k] for p in parts]) for k in first}
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(first, **{f.name: concat([getattr(p, f.name) for p in parts])
                                             for f in dataclasses.fields(first) if f.init})
    if isinstance(first, tuple):
        return tuple(concat([p[i] for p in parts]) for i in range(len(first)))
    return first


def to_device(batch: Any, device: torch.device | str) -> Any:
    """The same batch with every tensor on ``device`` (lists of ints and scalars untouched)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    if isinstance(batch, tuple):
        return tuple(to_device(x, device) for x in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


# --------------------------------------------------------------------------- batches in the object store


@dataclass
class RowSlice:
    """Rows ``[lo, hi)`` of a :class:`Sharded` batch: ``(ref, start, stop)`` pieces within its shards."""

    pieces: list  # [(ObjectRef, start, stop, shard rows)]


@dataclass
class Sharded:
    """A batch held in the object store as consecutive row shards (not fetched by the driver)."""

    refs: list  # ObjectRefs, one per shard, in row order
    sizes: list[int]  # rows of each shard

    @classmethod
    def put(cls, batch: Any, ledger=None) -> "Sharded":
        """``batch`` into the object store once (one serialisation, however many roles read it);
        counted in ``ledger`` (:class:`actors.ledger.Ledger`) when given."""
        import ray

        return cls([ledger.put(batch) if ledger is not None else ray.put(batch)], [rows(batch)])

    @property
    def rows(self) -> int:
        return sum(self.sizes)

    def slice(self, lo: int, hi: int) -> RowSlice:
        pieces, start = [], 0
        for ref, n in zip(self.refs, self.sizes):
            a, b = max(lo, start), min(hi, start + n)
            if a < b:
                pieces.append((ref, a - start, b - start, n))
            start += n
        if not pieces and self.refs:  # no rows for this rank: an empty batch of the same structure
            pieces.append((self.refs[0], 0, 0, self.sizes[0]))
        return RowSlice(pieces)

    def fetch(self) -> Any:
        """All rows, fetched and concatenated here (in a task or a rank; the driver never calls it)."""
        return resolve(self.slice(0, self.rows))


def resolve(arg: Any) -> Any:
    """Rank side: a :class:`RowSlice` becomes its rows (fetched from the object store); anything else
    is returned as is."""
    if not isinstance(arg, RowSlice):
        return arg
    import ray

    parts = ray.get([ref for ref, *_ in arg.pieces])
    return concat([p if (a, b) == (0, n) else take(p, range(a, b)) for p, (_, a, b, n) in zip(parts, arg.pieces)])
