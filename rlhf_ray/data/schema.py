"""The normalised raw form every reader returns, and the checks that build it.

A reader turns one source format into :class:`RawData`; everything after that
(filtering, splitting, writing) is format-agnostic. The checks here turn bad
values into a :class:`DataError` naming the file and the line (or row).
"""
from __future__ import annotations

import gzip
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Sequence

import numpy as np
import pandas as pd

from rlhf_ray.errors import DataError

INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp")


@dataclass
class RawData:
    """One dataset as read, before any filtering."""

    interactions: pd.DataFrame  # (N, 4): user str, item str, rating float64, timestamp int64 (unix seconds)
    items: pd.DataFrame  # (M, 3): item str (unique), title str, categories list[str]; may miss or add items
    source: str  # what was read, for messages: "<format> at <path>"

    def counts(self) -> dict[str, int]:
        return counts(self.interactions)


def counts(df: pd.DataFrame) -> dict[str, int]:
    """Distinct users, distinct items and rows of an interactions frame."""
    return {"users": int(df["user"].nunique()), "items": int(df["item"].nunique()), "interactions": int(len(df))}


def require_file(path: str | Path, what: str = "data file") -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: {what} not found")
    if p.is_dir():
        raise DataError(f"{p}: expected a {what}, found a directory")
    return p


def _locate(where: str, lines: np.ndarray | None, i: int) -> str:
    return f"{where}: line {int(lines[i])}" if lines is not None else f"{where}: row {i + 1}"


def _ids(values: pd.Series, name: str, where: str, lines: np.ndarray | None) -> pd.Series:
    s = values.astype("object")
    bad = s.isna().to_numpy() | (s.astype(str).str.strip() == "").to_numpy()
    if bad.any():
        raise DataError(f"{_locate(where, lines, int(np.argmax(bad)))}: empty {name}")
    s = s.astype(str).str.strip()
    # "12.0" from float-typed columns would not match "12" elsewhere; keep integers as integers.
    if values.dtype.kind == "f" and np.all(np.mod(values.to_numpy(), 1) == 0):
        s = values.astype(np.int64).astype(str)
    return s


def _numbers(values: pd.Series, name: str, where: str, lines: np.ndarray | None) -> np.ndarray:
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(num)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{_locate(where, lines, i)}: {name} {values.iloc[i]!r} is not a number")
    return num


def _timestamps(values: pd.Series, where: str, lines: np.ndarray | None, unit_ms: bool) -> np.ndarray:
    num = pd.to_numeric(values, errors="coerce")
    if num.isna().all() and not pd.api.types.is_numeric_dtype(values) and len(values):
        try:  # ISO dates / datetimes in a generic table
            dt = pd.to_datetime(values, utc=True, format="ISO8601")
            return ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
        except (ValueError, TypeError):
            pass
    ts = _numbers(values, "timestamp", where, lines)
    if unit_ms:
        ts = np.floor(ts / 1000.0)
    return ts.astype(np.int64)


def interactions_frame(user: pd.Series, item: pd.Series, rating: pd.Series, timestamp: pd.Series, *,
                       where: str, lines: np.ndarray | None = None, timestamp_ms: bool = False) -> pd.DataFrame:
    """Validate and normalise four columns into the interactions frame.

    ``lines``: the 1-based source line of each row (None: messages say "row i").
    ``timestamp_ms``: the source counts milliseconds; stored as whole seconds.
    """
    if len(user) == 0:
        raise DataError(f"{where}: no interactions in file")
    out = pd.DataFrame({
        "user": _ids(user.reset_index(drop=True), "user", where, lines),
        "item": _ids(item.reset_index(drop=True), "item", where, lines),
        "rating": _numbers(rating.reset_index(drop=True), "rating", where, lines),
        "timestamp": _timestamps(timestamp.reset_index(drop=True), where, lines, timestamp_ms),
    })
    return out


def items_frame(item: Sequence, title: Sequence | None = None,
                categories: Sequence[list[str]] | None = None) -> pd.DataFrame:
    """Item metadata: one row per item id (first occurrence wins), missing titles ""."""
    n = len(item)
    titles = ["" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t)
              for t in (title if title is not None else [""] * n)]
    cats = [[str(c) for c in cs if str(c).strip()] if isinstance(cs, (list, tuple, np.ndarray)) else []
            for cs in (categories if categories is not None else [[]] * n)]
    df = pd.DataFrame({"item": [str(i).strip() for i in item], "title": titles, "categories": cats})
    return df.drop_duplicates("item", keep="first").reset_index(drop=True)


def empty_items() -> pd.DataFrame:
    return items_frame([], [], [])


# What a damaged .gz raises while being read (EOFError: truncated).
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def gzip_error(where: str, e: BaseException) -> DataError:
    return DataError(f"{where}: truncated or corrupt gzip file ({e})")


@contextmanager
def open_text(path: Path, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Open a text file, transparently gunzipping ``*.gz``; gzip damage becomes a DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding=encoding) as f:
                yield f
        else:
            with open(path, encoding=encoding) as f:
                yield f
    except GZIP_ERRORS as e:
        raise gzip_error(str(path), e) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not {encoding} text ({e})") from None
