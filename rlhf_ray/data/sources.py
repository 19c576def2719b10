"""Dataset names -> readers. Each reader returns :class:`~rlhf_ray.data.schema.RawData`.

=========== ==================================================================
ml-100k     GroupLens dir/zip or RecBole atomic dir (default: the fetch cache)
amazon2014  Amazon 2014 5-core reviews JSON lines (+ ``--meta-path``)
amazon2018  Amazon 2018 5-core reviews JSON lines (+ ``--meta-path``)
amazon2023  Amazon 2023 reviews JSON lines (+ ``--meta-path``)
csv         CSV/TSV table: user,item,rating,timestamp[,title,category]
parquet     Parquet table, same columns
synthetic   seeded generator (``synthetic_*`` fields, ``seed``)
=========== ==================================================================
"""
from __future__ import annotations

from typing import Callable

from rlhf_ray.config import DataConfig
from rlhf_ray.data.schema import RawData
from rlhf_ray.errors import DataError


def _ml100k(cfg: DataConfig) -> RawData:
    from rlhf_ray.data.fetch import default_cache
    from rlhf_ray.data.movielens import read_movielens

    return read_movielens(cfg.path or default_cache("ml-100k"))


def _amazon(cfg: DataConfig) -> RawData:
    from rlhf_ray.data.amazon import read_amazon

    return read_amazon(_path(cfg), cfg.dataset, cfg.meta_path)


def _table(cfg: DataConfig) -> RawData:
    from rlhf_ray.data.tables import parse_column_map, read_table

    return read_table(_path(cfg), cfg.dataset, parse_column_map(cfg.columns))


def _synthetic(cfg: DataConfig) -> RawData:
    from rlhf_ray.data.synthetic import generate

    return generate(cfg.synthetic_users, cfg.synthetic_items, cfg.synthetic_interactions, cfg.seed)


def _path(cfg: DataConfig) -> str:
    if not cfg.path:
        raise DataError(f"dataset {cfg.dataset!r} needs --path (the reviews / table file)")
    return cfg.path


READERS: dict[str, Callable[[DataConfig], RawData]] = {
    "ml-100k": _ml100k,
    "amazon2014": _amazon,
    "amazon2018": _amazon,
    "amazon2023": _amazon,
    "csv": _table,
    "parquet": _table,
    "synthetic": _synthetic,
}
DATASETS = tuple(READERS)


def load_raw(cfg: DataConfig) -> RawData:
    """Read ``cfg.dataset`` from ``cfg.path``."""
    if cfg.dataset not in READERS:
        raise DataError(f"unknown dataset {cfg.dataset!r}; valid datasets: {', '.join(DATASETS)}")
    return READERS[cfg.dataset](cfg)
