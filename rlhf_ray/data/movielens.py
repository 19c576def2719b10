"""MovieLens-100K readers: GroupLens raw files (dir or zip) and RecBole atomic files.

GroupLens (https://grouplens.org/datasets/movielens/100k/): ``u.data`` is
``user<TAB>item<TAB>rating<TAB>timestamp`` without a header; ``u.item`` is
``|``-separated latin-1: id, title, release date, video date, URL, then 19 0/1
genre flags named by ``u.genre`` (``name|index`` lines).

RecBole atomic files: ``<name>.inter`` is tab-separated with a typed header
(``user_id:token  item_id:token  rating:float  timestamp:float``);
``<name>.item`` has ``item_id:token  movie_title:token_seq  release_year:token
class:token_seq`` where ``class`` holds space-separated genres.

:func:`read_movielens` detects which of the two a path holds.
"""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from rlhf_ray.data.schema import GZIP_ERRORS, RawData, gzip_error, interactions_frame, items_frame
from rlhf_ray.errors import DataError

# u.genre of ML-100K, in flag order (used when u.genre is absent).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)


def read_delimited(f: IO[bytes], where: str, sep: str, *, header: bool, encoding: str = "utf-8",
                   n_cols: int | None = None, quoting: int = csv.QUOTE_NONE) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a delimited text file as strings, keeping each row's 1-based source line number.

    Default no quoting (MovieLens titles hold bare quotes); blank lines are skipped but counted.
    """
    try:
        df = pd.read_csv(f, sep=sep, header=0 if header else None, dtype=str, encoding=encoding,
                         quoting=quoting, skip_blank_lines=False, keep_default_na=False,
                         na_values=[], engine="c")
    except GZIP_ERRORS as e:
        raise gzip_error(where, e) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{where}: file is empty") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{where}: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not {encoding} text ({e})") from None
    except (EOFError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{where}: cannot read ({e})") from None
    lines = np.arange(len(df), dtype=np.int64) + (2 if header else 1)
    blank = (df.isna() | (df == "")).all(axis=1).to_numpy()
    if blank.any():
        df, lines = df[~blank].reset_index(drop=True), lines[~blank]
    if n_cols is not None:
        if df.shape[1] != n_cols:
            raise DataError(f"{where}: expected {n_cols} {sep!r}-separated columns, found {df.shape[1]}")
        short = (df.isna() | (df == "")).any(axis=1).to_numpy()
        if short.any():
            i = int(np.argmax(short))
            raise DataError(f"{where}: line {int(lines[i])}: expected {n_cols} non-empty fields")
    return df, lines


class _Files:
    """GroupLens files in a directory or inside ``ml-100k.zip``."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.members: dict[str, str] = {}
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile as e:
                raise DataError(f"{path}: not a valid zip file ({e})") from None
            for name in self.zip.namelist():
                self.members.setdefault(name.rsplit("/", 1)[-1], name)

    def where(self, name: str) -> str:
        return f"{self.path}:{self.members[name]}" if self.zip else str(self.path / name)

    def exists(self, name: str) -> bool:
        return name in self.members if self.zip else (self.path / name).is_file()

    def open(self, name: str) -> IO[bytes]:
        if not self.exists(name):
            raise DataError(f"{self.path}: {name} not found (GroupLens ml-100k needs u.data and u.item)")
        if self.zip:
            return io.BytesIO(self.zip.read(self.members[name]))
        return open(self.path / name, "rb")


def read_grouplens(path: str | Path) -> RawData:
    """GroupLens ML-100K from its directory or ``ml-100k.zip``."""
    files = _Files(Path(path).expanduser())
    with files.open("u.data") as f:
        df, lines = read_delimited(f, files.where("u.data"), "\t", header=False, n_cols=4)
    inter = interactions_frame(df[0], df[1], df[2], df[3], where=files.where("u.data"), lines=lines)

    genres = list(ML100K_GENRES)
    if files.exists("u.genre"):
        with files.open("u.genre") as f:
            g, _ = read_delimited(f, files.where("u.genre"), "|", header=False, encoding="latin-1")
        genres = [str(x) for x in g[0].tolist()]
    with files.open("u.item") as f:
        it, it_lines = read_delimited(f, files.where("u.item"), "|", header=False, encoding="latin-1")
    if it.shape[1] != 5 + len(genres):
        raise DataError(f"{files.where('u.item')}: expected {5 + len(genres)} '|'-separated columns "
                        f"(id, title, dates, URL, {len(genres)} genre flags), found {it.shape[1]}")
    flags = it.iloc[:, 5:].to_numpy() == "1"
    cats = [[genres[j] for j in np.flatnonzero(row)] for row in flags]
    items = items_frame(it[0].tolist(), it[1].tolist(), cats)
    return RawData(inter, items, f"GroupLens ml-100k at {files.path}")


def _atomic_header(df: pd.DataFrame) -> dict[str, str]:
    """``{"user_id": "user_id:token", ...}``: RecBole header fields without their ``:type``."""
    return {str(c).split(":", 1)[0]: c for c in df.columns}


def read_recbole(inter_path: str | Path, item_path: str | Path | None = None) -> RawData:
    """RecBole atomic ``.inter`` (+ optional ``.item``) files."""
    inter_path = Path(inter_path).expanduser()
    if not inter_path.is_file():
        raise DataError(f"{inter_path}: file not found")
    with open(inter_path, "rb") as f:
        df, lines = read_delimited(f, str(inter_path), "\t", header=True)
    cols = _atomic_header(df)
    need = ["user_id", "item_id", "rating", "timestamp"]
    missing = [c for c in need if c not in cols]
    if missing:
        raise DataError(f"{inter_path}: missing column(s) {missing}; header has {list(df.columns)}")
    inter = interactions_frame(*(df[cols[c]] for c in need), where=str(inter_path), lines=lines)

    items = items_frame([], [], [])
    item_path = Path(item_path) if item_path is not None else inter_path.with_suffix(".item")
    if item_path.is_file():
        with open(item_path, "rb") as f:
            it, _ = read_delimited(f, str(item_path), "\t", header=True)
        icols = _atomic_header(it)
        if "item_id" not in icols:
            raise DataError(f"{item_path}: missing column item_id; header has {list(it.columns)}")
        title = next((icols[c] for c in icols if "title" in c), None)
        cat = next((icols[c] for c in ("class", "genre", "categories", "category") if c in icols), None)
        cats = [s.split() for s in it[cat].tolist()] if cat else None
        items = items_frame(it[icols["item_id"]].tolist(), it[title].tolist() if title else None, cats)
    return RawData(inter, items, f"RecBole atomic files at {inter_path.parent}")


def read_movielens(path: str | Path) -> RawData:
    """MovieLens-100K from whichever layout ``path`` holds (see module docstring)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: not found (run `rlhf-ray data fetch ml-100k`, or pass --path)")
    if p.is_file():
        if p.suffix == ".inter":
            return read_recbole(p)
        if p.name == "u.data":
            return read_grouplens(p.parent)
        if zipfile.is_zipfile(p):
            return read_grouplens(p)
        raise DataError(f"{p}: not a MovieLens file (expected ml-100k.zip, u.data or *.inter)")
    if (p / "u.data").is_file():
        return read_grouplens(p)
    inters = sorted(p.glob("*.inter"))
    if len(inters) == 1:
        return read_recbole(inters[0])
    if len(inters) > 1:
        raise DataError(f"{p}: several .inter files {[x.name for x in inters]}; pass one as --path")
    for sub in (p / "ml-100k", p / "ml-100k.zip"):
        if sub.exists():
            return read_movielens(sub)
    raise DataError(f"{p}: no MovieLens files (expected GroupLens u.data + u.item, or RecBole "
                    f"*.inter [+ *.item]); run `rlhf-ray data fetch ml-100k`")
