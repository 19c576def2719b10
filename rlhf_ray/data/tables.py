"""Generic tables: CSV/TSV (optionally ``.gz``) or Parquet with one interaction per row.

Required columns ``user, item, rating, timestamp``; optional ``title`` and
``category`` (one category, or several separated by ``|``; in Parquet also a
list). ``DataConfig.columns`` renames, e.g. ``user=userId,item=movieId``.
Timestamps are unix seconds, or date strings (``2019-03-01``).
"""
from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from rlhf_ray.data.movielens import read_delimited
from rlhf_ray.data.schema import RawData, interactions_frame, items_frame, require_file
from rlhf_ray.errors import DataError

OPTIONAL_COLUMNS = ("title", "category")


def parse_column_map(pairs: list[str] | None) -> dict[str, str]:
    """``["user=userId", ...]`` -> ``{"user": "userId", ...}`` (canonical name -> file's name)."""
    out: dict[str, str] = {}
    valid = ("user", "item", "rating", "timestamp", *OPTIONAL_COLUMNS)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key.strip() not in valid or not value.strip():
            raise DataError(f"columns: {pair!r} is not NAME=COLUMN with NAME one of {list(valid)}")
        out[key.strip()] = value.strip()
    return out


def _split_categories(value) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return []
    return [c.strip() for c in str(value).split("|") if c.strip()]


def read_table(path: str | Path, kind: str, columns: dict[str, str] | None = None) -> RawData:
    """Read a ``kind`` ("csv" or "parquet") table of interactions."""
    p = require_file(path, f"{kind} file")
    where = str(p)
    lines = None
    if kind == "parquet":
        try:
            df = pd.read_parquet(p)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{where}: not a readable Parquet file ({e})") from None
    else:
        sep = "\t" if ".tsv" in p.suffixes else ","
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rb") as f:
            df, lines = read_delimited(f, where, sep, header=True, quoting=csv.QUOTE_MINIMAL)
    names = {c: c for c in ("user", "item", "rating", "timestamp", *OPTIONAL_COLUMNS)}
    names.update(columns or {})
    need = [names[c] for c in ("user", "item", "rating", "timestamp")]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; found {list(map(str, df.columns))} "
                        f"(rename with --columns user=COL,item=COL,...)")
    inter = interactions_frame(*(df[c] for c in need), where=where, lines=lines)
    title = df[names["title"]].tolist() if names["title"] in df.columns else None
    cats = [_split_categories(v) for v in df[names["category"]]] if names["category"] in df.columns else None
    items = items_frame(inter["item"].tolist(), title, cats)
    return RawData(inter, items, f"{kind} at {p}")

