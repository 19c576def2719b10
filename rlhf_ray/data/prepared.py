"""Read a prepared data directory (layout: the :mod:`rlhf_ray.data` docstring).

    data = load_prepared("/tmp/ml100k-prepared")
    hist, targets, target_ratings, users = data.histories("test", max_history=50)

Splits, for ``histories(split)`` (a user with no positive target in the range is skipped):

* ``"valid"``: history items[:valid_start], targets = positives in items[valid_start:test_start]
* ``"test"``:  history items[:test_start],  targets = positives in items[test_start:end]
* ``"train"``: history items[:valid_start], no targets (every list empty); users with an
  empty training history are skipped. Training code cuts its own examples from it.

"Positive" means rating > ``positive_threshold`` of the config the data was prepared with.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from rlhf_ray.config import DataConfig
from rlhf_ray.errors import DataError

FORMAT_VERSION = 1
PARQUET_FILES = ("interactions.parquet", "items.parquet", "sequences.parquet", "users.parquet")  # by name
SPLITS = ("train", "valid", "test")


def fingerprint(directory: str | Path) -> str:
    """sha256 over the bytes of the Parquet files of ``directory``, concatenated in name order."""
    h = hashlib.sha256()
    for name in PARQUET_FILES:
        with open(Path(directory) / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class Histories(NamedTuple):
    """One entry per user that has something to predict in the split."""

    histories: list[list[int]]  # per user: history item_idx, oldest first (at most max_history)
    targets: list[list[int]]  # per user: positive target item_idx, chronological ([] for "train")
    target_ratings: list[list[float]]  # per user: ratings of the targets
    user_idx: np.ndarray  # (U',) int64


@dataclass
class Prepared:
    """A loaded prepared directory: the three small tables and the stats.

    List cells of ``sequences`` are numpy arrays; ``items.categories`` cells are lists.
    """

    path: Path
    items: pd.DataFrame  # (n_items,) item, item_idx, title, category, categories, popularity, is_tail
    users: pd.DataFrame  # (n_users,) user, user_idx
    sequences: pd.DataFrame  # (n_users,) user_idx, items, ratings, timestamps, valid_start, test_start, end
    stats: dict

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def fingerprint(self) -> str:
        return self.stats["fingerprint"]

    @cached_property
    def config(self) -> DataConfig:
        """The DataConfig the directory was prepared with."""
        return DataConfig.from_dict(self.stats["config"], source=str(self.path / "stats.json"))

    @property
    def positive_threshold(self) -> float:
        return float(self.stats["config"]["positive_threshold"])

    @cached_property
    def category_names(self) -> list[str]:
        """Sorted distinct primary categories; ``item_categories`` indexes into this list."""
        return sorted(set(self.items["category"]))

    @cached_property
    def item_categories(self) -> np.ndarray:
        """(n_items,) int64: primary category code of each item_idx."""
        return pd.Index(self.category_names).get_indexer(self.items["category"]).astype(np.int64)

    @cached_property
    def is_tail(self) -> np.ndarray:
        """(n_items,) bool: item is among the ``tail_fraction`` least popular training items."""
        return self.items["is_tail"].to_numpy(dtype=bool)

    @cached_property
    def popularity(self) -> np.ndarray:
        """(n_items,) int64: training interactions per item."""
        return self.items["popularity"].to_numpy(dtype=np.int64)

    def interactions(self) -> pd.DataFrame:
        """The filtered interactions (user, item, rating, timestamp), read on demand."""
        return pd.read_parquet(self.path / "interactions.parquet")

    def histories(self, split: str, max_history: int | None = None) -> Histories:
        """Histories and positive targets of ``split`` (see module docstring)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        thr = self.positive_threshold
        out = Histories([], [], [], np.zeros(0, dtype=np.int64))
        users: list[int] = []
        s = self.sequences
        for u, items, ratings, vs, ts, end in zip(s["user_idx"], s["items"], s["ratings"],
                                                 s["valid_start"], s["test_start"], s["end"]):
            cut, lo, hi = {"train": (vs, vs, vs), "valid": (vs, vs, ts), "test": (ts, ts, end)}[split]
            hist = items[:cut]
            pos = ratings[lo:hi] > thr
            if split == "train" and len(hist) == 0 or split != "train" and not pos.any():
                continue
            if max_history is not None:
                hist = hist[max(0, len(hist) - max_history):]
            out.histories.append(hist.tolist())
            out.targets.append(items[lo:hi][pos].tolist())
            out.target_ratings.append(ratings[lo:hi][pos].tolist())
            users.append(int(u))
        return out._replace(user_idx=np.asarray(users, dtype=np.int64))


def load_prepared(path: str | Path, verify: bool = True) -> Prepared:
    """Load a directory written by ``rlhf-ray data prepare`` (a local path or a storage URI).

    ``verify``: recompute the fingerprint and refuse files changed since preparation.
    """
    from rlhf_ray.storage import local_copy

    p = local_copy(path, "stats.json")  # a storage URI: this node's copy
    if not p.is_dir():
        raise DataError(f"{path}: prepared data directory not found (run `rlhf-ray data prepare --out {path}`)")
    for name in (*PARQUET_FILES, "stats.json"):
        if not (p / name).is_file():
            raise DataError(f"{p}: incomplete prepared data directory, {name} is missing")
    try:
        stats = json.loads((p / "stats.json").read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{p / 'stats.json'}: not valid JSON ({e})") from None
    if stats.get("format") != FORMAT_VERSION:
        raise DataError(f"{p}: prepared with format {stats.get('format')!r}, this code reads "
                        f"format {FORMAT_VERSION}; prepare it again")
    if verify and fingerprint(p) != stats.get("fingerprint"):
        raise DataError(f"{p}: Parquet files do not match the fingerprint in stats.json "
                        f"(modified after preparation?); prepare it again")
    items = pd.read_parquet(p / "items.parquet")
    items["categories"] = [list(c) for c in items["categories"]]
    users = pd.read_parquet(p / "users.parquet")
    sequences = pd.read_parquet(p / "sequences.parquet")
    if not np.array_equal(items["item_idx"].to_numpy(), np.arange(len(items))):
        raise DataError(f"{p / 'items.parquet'}: item_idx is not 0..n_items-1 in order")
    return Prepared(p, items, users, sequences, stats)
