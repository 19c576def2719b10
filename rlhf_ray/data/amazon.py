"""Amazon Reviews readers: 2014 / 2018 5-core and 2023 JSON lines (optionally ``.gz``).

Reviews (one JSON object per line):

* 2014, 2018: ``reviewerID``, ``asin``, ``overall`` (1-5), ``unixReviewTime`` (s)
* 2023: ``user_id``, ``parent_asin``, ``rating``, ``timestamp`` (ms, stored as s;
  rows are first ordered by the ms value so same-second events keep their order)

Metadata (``DataConfig.meta_path``; else ``meta_<name>.json[l][.gz]`` beside the
reviews is used when present): ``asin`` / ``parent_asin``, ``title``, and the
category path ``categories`` (2014: a list of paths, the first is used), ``category``
(2018) or ``categories`` (2023, falling back to ``main_category``). The levels every
item shares (e.g. the root "Beauty" of a per-category file) are dropped so the first
remaining level is a useful primary category.

Files are read with ``datasets.load_dataset("json", ...)``; when that fails, a
line-by-line pass names the bad line (2014 metadata is Python-literal, not JSON:
each line falls back to :func:`ast.literal_eval`). A path that does not exist
locally but looks like ``owner/name[:config]`` is loaded from the Hugging Face hub.
"""
from __future__ import annotations

import ast
import html
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from rlhf_ray.data.schema import (GZIP_ERRORS, RawData, empty_items, gzip_error, interactions_frame, items_frame,
                                  open_text)
from rlhf_ray.errors import DataError


@dataclass(frozen=True)
class Schema:
    user: str
    item: str
    rating: str
    timestamp: str
    timestamp_ms: bool
    meta_item: str


SCHEMAS = {
    "amazon2014": Schema("reviewerID", "asin", "overall", "unixReviewTime", False, "asin"),
    "amazon2018": Schema("reviewerID", "asin", "overall", "unixReviewTime", False, "asin"),
    "amazon2023": Schema("user_id", "parent_asin", "rating", "timestamp", True, "parent_asin"),
}

_HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")
_FILE_SUFFIXES = {".json", ".jsonl", ".gz", ".csv", ".parquet"}


def _scan(path: Path, keep: tuple[str, ...], python_literals: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """Parse JSON lines one by one, keeping ``keep`` keys; errors name the line."""
    keep = tuple(dict.fromkeys(keep))
    rows: dict[str, list] = {k: [] for k in keep}
    lines: list[int] = []
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                rec = None
                if python_literals:
                    try:
                        rec = ast.literal_eval(line.strip())
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        pass
                if rec is None:
                    raise DataError(f"{path}: line {n}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}: line {n}: expected a JSON object, got {type(rec).__name__}")
            for k in keep:
                rows[k].append(rec.get(k))
            lines.append(n)
    return pd.DataFrame(rows), np.asarray(lines, dtype=np.int64)


def _load_with_datasets(source: str, config: str | None = None) -> pd.DataFrame:
    import datasets
    from datasets.utils import logging as ds_logging

    bars_were_off = datasets.are_progress_bars_disabled()
    verbosity = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    try:
        with tempfile.TemporaryDirectory(prefix="rlhf-ray-json-") as cache:
            if config is None and Path(source).exists():
                ds = datasets.load_dataset("json", data_files=source, split="train", cache_dir=cache,
                                           keep_in_memory=True)
            else:
                ds = datasets.load_dataset(source, config, cache_dir=cache, keep_in_memory=True)
                if isinstance(ds, datasets.DatasetDict):
                    split = "full" if "full" in ds else "train" if "train" in ds else next(iter(ds))
                    ds = ds[split]
            return ds.to_pandas()
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()
        ds_logging.set_verbosity(verbosity)


def read_records(path: str | Path, keep: tuple[str, ...], *, python_literals: bool = False
                 ) -> tuple[pd.DataFrame, np.ndarray | None, str]:
    """Records of a JSON-lines file (or hub dataset): (frame with ``keep`` columns, lines or None, where)."""
    p = Path(path).expanduser()
    if not p.exists():
        name = str(path)
        if not _HUB_NAME.match(name) or p.suffix in _FILE_SUFFIXES:
            raise DataError(f"{p}: file not found")
        repo, _, config = name.partition(":")
        try:
            df = _load_with_datasets(repo, config or None)
        except Exception as e:  # noqa: BLE001 - any hub/network failure is the user's to fix
            raise DataError(f"{name}: no such file, and loading it as a hub dataset failed: {e}") from None
        return df.reindex(columns=list(keep)), None, name
    if p.is_dir():
        raise DataError(f"{p}: expected a JSON lines file, found a directory")
    from datasets.exceptions import DatasetsError

    try:
        df = _load_with_datasets(str(p))
        return df.reindex(columns=list(keep)), None, str(p)  # absent keys: all-NaN, named by the caller
    except GZIP_ERRORS as e:
        raise gzip_error(str(p), e) from None
    except (DatasetsError, pa.ArrowException, ValueError, TypeError):
        # Malformed line, Python literals or mixed types: no line number from pyarrow; go line by line.
        df, lines = _scan(p, keep, python_literals)
        return df, lines, str(p)


def _missing(df: pd.DataFrame, keys: list[str], where: str, version: str) -> None:
    absent = [k for k in keys if k not in df.columns or df[k].isna().all()]
    if absent:
        other = [v for v, s in SCHEMAS.items() if v != version and s.user in df.columns
                 and not df[s.user].isna().all()]
        hint = f" (looks like {other[0]}; use --dataset {other[0]})" if other else ""
        raise DataError(f"{where}: missing field(s) {absent} for {version}{hint}")


def _interactions(path: str | Path, version: str) -> pd.DataFrame:
    s = SCHEMAS[version]
    keep = (s.user, s.item, s.rating, s.timestamp)
    other_users = tuple(dict.fromkeys(x.user for x in SCHEMAS.values() if x.user != s.user))
    df, lines, where = read_records(path, keep + other_users)
    _missing(df, list(keep), where, version)

    def build(df: pd.DataFrame, lines: np.ndarray | None) -> pd.DataFrame:
        if s.timestamp_ms:  # order by the full-precision time before dropping the milliseconds
            order = np.argsort(pd.to_numeric(df[s.timestamp], errors="coerce").to_numpy(na_value=np.nan),
                               kind="stable")
            df = df.iloc[order]
            lines = lines[order] if lines is not None else None
        return interactions_frame(df[s.user], df[s.item], df[s.rating], df[s.timestamp], where=where,
                                  lines=lines, timestamp_ms=s.timestamp_ms)

    try:
        return build(df, lines)
    except DataError:
        if lines is not None or not Path(where).exists():
            raise
        df, lines = _scan(Path(where), keep, python_literals=False)  # rescan to name the line
        return build(df, lines)


def _category_path(rec_categories, rec_category, main_category) -> list[str]:
    value = rec_categories if _nonempty(rec_categories) else rec_category
    if _nonempty(value) and isinstance(value[0], (list, tuple, np.ndarray)):  # 2014: list of paths
        value = value[0]
    cats = [html.unescape(str(c)).strip() for c in value] if _nonempty(value) else []
    if not cats and isinstance(main_category, str) and main_category.strip():
        cats = [main_category.strip()]
    return [c for c in cats if c]


def _nonempty(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray)) and len(v) > 0


def strip_common_root(paths: list[list[str]]) -> list[list[str]]:
    """Drop leading levels shared by every non-empty path, never emptying a path."""
    nonempty = [p for p in paths if p]
    depth = 0
    while nonempty and all(len(p) > depth + 1 and p[depth] == nonempty[0][depth] for p in nonempty):
        depth += 1
    return [p[depth:] if p else p for p in paths]


def _default_meta(path: Path) -> Path | None:
    base = path.name.split(".", 1)[0]
    base = base.removeprefix("reviews_").removesuffix("_5")
    for ext in (".json.gz", ".json", ".jsonl.gz", ".jsonl"):
        cand = path.parent / f"meta_{base}{ext}"
        if cand.is_file() and cand != path:
            return cand
    return None


def _items(meta_path: str | Path, version: str, wanted: set[str]) -> pd.DataFrame:
    s = SCHEMAS[version]
    keep = (s.meta_item, "title", "categories", "category", "main_category")
    df, _, where = read_records(meta_path, keep, python_literals=True)
    _missing(df, [s.meta_item], where, version)
    df = df[df[s.meta_item].astype(str).isin(wanted)]
    paths = strip_common_root([_category_path(a, b, c) for a, b, c in
                               zip(df["categories"], df["category"], df["main_category"])])
    titles = [html.unescape(t) if isinstance(t, str) else "" for t in df["title"]]
    return items_frame(df[s.meta_item].astype(str).tolist(), titles, paths)


def read_amazon(path: str | Path, version: str, meta_path: str | Path | None = None) -> RawData:
    """Amazon reviews of ``version`` ("amazon2014" | "amazon2018" | "amazon2023") plus metadata."""
    inter = _interactions(path, version)
    p = Path(path).expanduser()
    meta = Path(meta_path).expanduser() if meta_path else (_default_meta(p) if p.is_file() else None)
    items = _items(meta, version, set(inter["item"])) if meta else empty_items()
    note = f" + {meta}" if meta else " (no metadata)"
    return RawData(inter, items, f"{version} reviews at {path}{note}")
