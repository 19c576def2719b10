"""Raw interactions -> the prepared directory described in :mod:`rlhf_ray.data`.

Steps, in order (each reported in ``stats.json``):

1. drop exact duplicate rows (same user, item, rating, timestamp);
2. k-core: repeatedly drop users and items with fewer than ``k_core`` interactions;
3. per-user chronological sequences (stable sort by timestamp, ties keep file order);
4. split positions per user:
   * ``leave_one_out``: test_start = last positive, valid_start = second-last
     positive, end = test_start + 1; users with < 2 positives are dropped;
   * ``temporal``: by position, 80/10/10 (n_test = n_valid = max(1, round(n/10)),
     end = n); users with < 3 interactions are dropped;
5. ids -> indices: user_idx / item_idx by sorted original id (numerically when every
   id is an integer), over the users and items that remain (``keep_cold_items``: the items
   of the raw catalogue too, so items without interactions stay rankable, popularity 0);
6. popularity = training interactions (items[:valid_start]); tail = the first
   ceil(tail_fraction * n_items) items ordered by (popularity, item_idx);
7. write Parquet + ``stats.json`` into ``DIR.tmp-<pid>``, then rename onto DIR.

Full sequences are stored; ``max_history`` is applied by readers.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rlhf_ray.config import DataConfig
from rlhf_ray.data.prepared import FORMAT_VERSION, PARQUET_FILES, fingerprint
from rlhf_ray.data.schema import RawData, counts
from rlhf_ray.data.sources import load_raw
from rlhf_ray.errors import DataError

_INT = re.compile(r"^-?\d+$")


@dataclass
class Built:
    """A prepared dataset in memory: one Arrow table per Parquet file, plus stats (no fingerprint yet)."""

    tables: dict[str, pa.Table]  # keys = PARQUET_FILES stems: items, users, sequences, interactions
    stats: dict


def sorted_ids(ids: np.ndarray) -> np.ndarray:
    """Unique ids in index order: numeric if every id is an integer, else lexicographic."""
    uniq = pd.unique(np.asarray(ids, dtype=object))
    if all(_INT.match(str(x)) for x in uniq):
        return np.array(sorted(uniq, key=int), dtype=object)
    return np.array(sorted(uniq), dtype=object)


def drop_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    dup = df.duplicated(keep="first").to_numpy()
    return df[~dup].reset_index(drop=True), int(dup.sum())


def k_core(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Largest subset where every user and every item has >= k interactions (rows)."""
    if k <= 1 or df.empty:
        return df
    u, _ = pd.factorize(df["user"])
    i, _ = pd.factorize(df["item"])
    keep = np.ones(len(df), dtype=bool)
    while True:
        uc = np.bincount(u[keep], minlength=u.max() + 1)
        ic = np.bincount(i[keep], minlength=i.max() + 1)
        new = keep & (uc[u] >= k) & (ic[i] >= k)
        if new.sum() == keep.sum():
            return df[keep].reset_index(drop=True)
        keep = new


def split_positions(positive: np.ndarray, offsets: np.ndarray, method: str
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (valid_start, test_start, end, keep) for sequences concatenated at ``offsets``.

    ``positive``: (N,) bool, rows grouped by user in chronological order;
    ``offsets``: (U + 1,) start of each user's rows. Returned arrays are (U,).
    """
    counts = np.diff(offsets)  # (U,)
    if method == "temporal":
        n_hold = np.maximum(1, np.floor(counts / 10 + 0.5)).astype(np.int64)
        end = counts.astype(np.int64)
        test_start = end - n_hold
        valid_start = test_start - n_hold
        return valid_start, test_start, end, valid_start >= 1
    user = np.repeat(np.arange(len(counts)), counts)  # (N,)
    pos = np.arange(len(positive)) - offsets[user]  # (N,) position within the user's sequence
    p = np.where(positive, pos, -1)
    last = np.maximum.reduceat(p, offsets[:-1])  # (U,) last positive position, -1 if none
    second = np.maximum.reduceat(np.where(p == last[user], -1, p), offsets[:-1])
    return second, last, last + 1, second >= 0


def build(raw: RawData, cfg: DataConfig, log: Callable[[str], None] = print) -> Built:
    """Filter, split and index ``raw`` per ``cfg`` (see module docstring)."""
    raw_counts = raw.counts()
    df, n_dup = drop_duplicates(raw.interactions[["user", "item", "rating", "timestamp"]])
    if n_dup:
        log(f"dropped {n_dup} duplicate rows")

    df = k_core(df, cfg.k_core)
    if df.empty:
        raise DataError(f"{raw.source}: k-core filtering (k_core={cfg.k_core}) removed every interaction; "
                        f"lower --k-core")
    core_counts = counts(df)

    # Chronological per-user order: by user, then timestamp, then file order.
    user_ids = sorted_ids(df["user"].to_numpy())
    u_rank = pd.Index(user_ids).get_indexer(df["user"].to_numpy())
    order = np.lexsort((np.arange(len(df)), df["timestamp"].to_numpy(), u_rank))
    df = df.iloc[order].reset_index(drop=True)
    u_rank = u_rank[order]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(u_rank, minlength=len(user_ids)))])
    positive = df["rating"].to_numpy() > cfg.positive_threshold
    valid_start, test_start, end, keep = split_positions(positive, offsets, cfg.split)
    n_dropped_users = int((~keep).sum())
    if not keep.any():
        need = ("at least 2 ratings above positive_threshold="
                f"{cfg.positive_threshold}") if cfg.split == "leave_one_out" else "at least 3 interactions"
        raise DataError(f"{raw.source}: {cfg.split} split: no user has {need} after k-core filtering")

    df = df[keep[u_rank]].reset_index(drop=True)
    valid_start, test_start, end = valid_start[keep], test_start[keep], end[keep]
    user_ids = user_ids[keep]
    per_user = np.diff(offsets)[keep]  # (U,) interactions per kept user
    offsets = np.concatenate([[0], np.cumsum(per_user)]).astype(np.int64)
    user_idx = np.repeat(np.arange(len(user_ids), dtype=np.int64), per_user)  # (N,)
    kept = df["item"].to_numpy()
    item_ids = sorted_ids(np.concatenate([kept, raw.items["item"].to_numpy()]) if cfg.keep_cold_items else kept)
    item_idx = pd.Index(item_ids).get_indexer(df["item"].to_numpy()).astype(np.int64)  # (N,)
    positive = df["rating"].to_numpy() > cfg.positive_threshold
    pos = np.arange(len(df)) - offsets[user_idx]  # (N,) position within the user's sequence

    train = pos < valid_start[user_idx]
    popularity = np.bincount(item_idx[train], minlength=len(item_ids)).astype(np.int64)
    n_tail = math.ceil(round(cfg.tail_fraction * len(item_ids), 9))
    is_tail = np.zeros(len(item_ids), dtype=bool)
    is_tail[np.lexsort((np.arange(len(item_ids)), popularity))[:n_tail]] = True

    in_valid = (pos >= valid_start[user_idx]) & (pos < test_start[user_idx]) & positive
    in_test = (pos >= test_start[user_idx]) & (pos < end[user_idx]) & positive
    stats = {
        "format": FORMAT_VERSION,
        "dataset": cfg.dataset,
        "source": raw.source,
        "raw": raw_counts,
        "duplicates_dropped": n_dup,
        "after_k_core": core_counts,
        "users_dropped_by_split": n_dropped_users,
        "prepared": {
            "users": len(user_ids),
            "items": len(item_ids),
            "interactions": len(df),
            "positives": int(positive.sum()),
            "density": round(len(df) / (len(user_ids) * len(item_ids)), 6),
            **({"cold_items": int((np.bincount(item_idx, minlength=len(item_ids)) == 0).sum())}
               if cfg.keep_cold_items else {}),
        },
        "split": {
            "method": cfg.split,
            "train_interactions": int(train.sum()),
            "valid_users": int(np.bincount(user_idx[in_valid], minlength=len(user_ids)).astype(bool).sum()),
            "valid_targets": int(in_valid.sum()),
            "test_users": int(np.bincount(user_idx[in_test], minlength=len(user_ids)).astype(bool).sum()),
            "test_targets": int(in_test.sum()),
        },
        "head_tail": {
            "tail_fraction": cfg.tail_fraction,
            "head_items": int(len(item_ids) - n_tail),
            "tail_items": int(n_tail),
            "head_train_interactions": int(popularity[~is_tail].sum()),
            "tail_train_interactions": int(popularity[is_tail].sum()),
        },
        "config": cfg.to_dict(),
    }

    bounds = np.stack([valid_start, test_start, end]).astype(np.int64)  # (3, U)
    tables = {
        "items": _items_table(raw.items, item_ids, popularity, is_tail),
        "users": pa.table({
            "user": pa.array(user_ids.astype(str), pa.string()),
            "user_idx": pa.array(np.arange(len(user_ids), dtype=np.int64)),
        }),
        "sequences": _sequences_table(df, item_idx, offsets, bounds),
        "interactions": pa.table({
            "user": pa.array(df["user"].to_numpy().astype(str), pa.string()),
            "item": pa.array(df["item"].to_numpy().astype(str), pa.string()),
            "rating": pa.array(df["rating"].to_numpy(np.float64)),
            "timestamp": pa.array(df["timestamp"].to_numpy(np.int64)),
        }),
    }
    return Built(tables, stats)


def _items_table(meta: pd.DataFrame, item_ids: np.ndarray, popularity: np.ndarray, is_tail: np.ndarray) -> pa.Table:
    """items.parquet: metadata joined onto item_idx order; no metadata -> "" / [] / "unknown"."""
    meta = meta.drop_duplicates("item").set_index("item").reindex(item_ids)
    titles = [t if isinstance(t, str) else "" for t in meta["title"]]
    cats = [list(c) if isinstance(c, (list, tuple, np.ndarray)) else [] for c in meta["categories"]]
    return pa.table({
        "item": pa.array(item_ids.astype(str), pa.string()),
        "item_idx": pa.array(np.arange(len(item_ids), dtype=np.int64)),
        "title": pa.array(titles, pa.string()),
        "category": pa.array([c[0] if c else "unknown" for c in cats], pa.string()),
        "categories": pa.array(cats, pa.list_(pa.string())),
        "popularity": pa.array(popularity.astype(np.int64)),
        "is_tail": pa.array(is_tail.astype(bool)),
    })


def _sequences_table(df: pd.DataFrame, item_idx: np.ndarray, offsets: np.ndarray, bounds: np.ndarray) -> pa.Table:
    """sequences.parquet: rows of ``df`` (grouped by user, chronological) cut at ``offsets`` (U + 1,).

    ``bounds``: (3, U) valid_start, test_start, end.
    """
    list_offsets = pa.array(offsets, pa.int32())

    def lists(values: np.ndarray) -> pa.ListArray:  # (N,) -> one list per user
        return pa.ListArray.from_arrays(list_offsets, pa.array(values))

    return pa.table({
        "user_idx": pa.array(np.arange(len(offsets) - 1, dtype=np.int64)),
        "items": lists(item_idx.astype(np.int64)),
        "ratings": lists(df["rating"].to_numpy(np.float64)),
        "timestamps": lists(df["timestamp"].to_numpy(np.int64)),
        "valid_start": pa.array(bounds[0]),
        "test_start": pa.array(bounds[1]),
        "end": pa.array(bounds[2]),
    })


def check_out(out: Path) -> None:
    """Refuse to replace anything at ``out`` but an empty directory or a prepared one."""
    if not out.exists():
        return
    if out.is_dir() and (not any(out.iterdir()) or (out / "stats.json").is_file()):
        return
    raise DataError(f"{out}: exists and is not a prepared data directory; refusing to replace it "
                    f"(remove it or choose another --out)")


def write(built: Built, out: str | Path) -> dict:
    """Write ``built`` to ``out`` atomically; return the stats with their fingerprint."""
    out = Path(out).expanduser().resolve()
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    old = out.parent / f"{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name in PARQUET_FILES:
            pq.write_table(built.tables[name.removesuffix(".parquet")], tmp / name)
        stats = {**built.stats, "fingerprint": fingerprint(tmp)}
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        if out.exists():
            out.rename(old)
            try:
                tmp.rename(out)
            except OSError:
                old.rename(out)
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
        return stats
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary(stats: dict) -> str:
    """Human-readable lines for a stats dict."""
    raw, core, prep, split, ht = (stats[k] for k in ("raw", "after_k_core", "prepared", "split", "head_tail"))
    k = stats["config"]["k_core"]
    return "\n".join([
        f"raw: {raw['users']} users, {raw['items']} items, {raw['interactions']} ratings "
        f"({stats['duplicates_dropped']} duplicate rows dropped)",
        f"{k}-core: {core['users']} users, {core['items']} items, {core['interactions']} ratings",
        f"{split['method']} split: {stats['users_dropped_by_split']} users dropped",
        f"prepared: {prep['users']} users, {prep['items']} items, {prep['interactions']} interactions, "
        f"{prep['positives']} positives, density {prep['density']:.4f}"
        + (f", {prep['cold_items']} items without interactions kept" if "cold_items" in prep else ""),
        f"train interactions {split['train_interactions']}; valid: {split['valid_users']} users / "
        f"{split['valid_targets']} targets; test: {split['test_users']} users / {split['test_targets']} targets",
        f"head/tail items: {ht['head_items']}/{ht['tail_items']} (tail_fraction {ht['tail_fraction']}); "
        f"training interactions on head/tail: {ht['head_train_interactions']}/{ht['tail_train_interactions']}",
        f"fingerprint: {stats.get('fingerprint', '-')}",
    ])


def prepare(cfg: DataConfig, out: str | Path, log: Callable[[str], None] = print) -> dict:
    """Read ``cfg``'s dataset, prepare it, write it to ``out``; return the stats."""
    out = Path(out).expanduser().resolve()
    check_out(out)  # fail before the (slow) work, and again just before replacing
    raw = load_raw(cfg)
    c = raw.counts()
    log(f"{raw.source}: {c['users']} users, {c['items']} items, {c['interactions']} ratings")
    stats = write(build(raw, cfg, log), out)
    log(summary(stats))
    log(f"wrote {out}")
    return stats
