"""Row selection, splitting and concatenation of batches, whatever they hold.

A *batch* is a tensor or numpy array (rows = dim 0), a list (rows = items), a
dataclass or tuple of batches (every field split the same way; ``None`` and plain
scalars are carried along unchanged). :class:`rlhf_ray.generation.Prompts` and
:class:`actors.experience.Experience` are batches, so one function shards them for
the ranks of a group and picks PPO minibatches.
"""
from __future__ import annotations

import dataclasses
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


def split(batch: Any, n: int, equal: bool = False) -> list:
    """``n`` contiguous shards of ``batch``; ``equal``: every shard the same size (else an error)."""
    total = rows(batch)
    if total is None:
        raise ValueError(f"cannot split a {type(batch).__name__}: it holds no rows")
    if equal and total % n:
        raise ValueError(f"a batch of {total} rows does not split into {n} equal shards")
    bounds = np.linspace(0, total, n + 1).round().astype(int) if not equal else np.arange(0, total + 1, total // n)
    return [take(batch, range(bounds[i], bounds[i + 1])) for i in range(n)]


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
