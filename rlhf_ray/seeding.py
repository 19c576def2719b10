"""Seeds and epoch shards, derived one way for every stage, every rank and every PPO actor.

    seed(base, "order", epoch, rank) -> int    an independent 32-bit seed (numpy SeedSequence)
    rng(base, "order", epoch)                  numpy Generator on that seed
    py_random(base, "pages", epoch)            random.Random on that seed
    shard(order, step, per_rank, rank, world)  the rows rank ``rank`` takes at global step ``step``

Keys are ints or short strings naming the purpose ("order", "pages", "rollout", ...): two
purposes of one run never share a random stream, and a rank, an epoch or an actor is one
more key, so nothing is ``seed * 7919 + epoch``-style arithmetic that can collide.
"""
from __future__ import annotations

import random
import zlib

import numpy as np


def _key(k: int | str) -> int:
    return zlib.crc32(k.encode()) if isinstance(k, str) else int(k) % 2**32


def seed(base: int, *keys: int | str) -> int:
    """A 32-bit seed for (base, keys), independent of every other key tuple."""
    return int(np.random.SeedSequence([_key(base), *map(_key, keys)]).generate_state(1)[0])


def rng(base: int, *keys: int | str) -> np.random.Generator:
    return np.random.default_rng(seed(base, *keys))


def py_random(base: int, *keys: int | str) -> random.Random:
    return random.Random(seed(base, *keys))


def seed_everything(base: int, *keys: int | str) -> int:
    """Python, NumPy and torch global RNGs from (base, keys); returns the seed used."""
    import torch

    s = seed(base, *keys)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s


def shard(order: np.ndarray, step: int, per_rank: int, rank: int, world: int) -> np.ndarray:
    """Indices (into the epoch's data) of rank ``rank`` at global step ``step``: the step takes
    ``world * per_rank`` consecutive entries of ``order`` (wrapping around its end), rank r the
    r-th block of ``per_rank`` of them. Every rank takes the same number of rows."""
    n = len(order)
    if n == 0 or per_rank <= 0:
        return np.zeros(0, dtype=np.int64)
    lo = (step * world + rank) * per_rank
    return np.asarray(order)[np.arange(lo, lo + per_rank) % n]
