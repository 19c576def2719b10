"""``rlhf-ray data prepare``: how raw interactions become training data."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

from rlhf_ray.config.base import Config, doc, require


@dataclass
class DataConfig(Config):
    """How raw interactions become training data (``rlhf-ray data prepare``)."""

    dataset: str = field(default="ml-100k", metadata=doc(
        "dataset name: ml-100k | amazon2014 | amazon2018 | amazon2023 | csv | parquet | synthetic"))
    path: str | None = field(default=None, metadata=doc(
        "raw data location (file or directory); ml-100k: a GroupLens zip/dir or RecBole atomic dir; "
        "default: the fetch cache", path=True))
    meta_path: str | None = field(default=None, metadata=doc("item metadata file (Amazon meta JSON lines)", path=True))
    k_core: int = field(default=5, metadata=doc("iteratively keep users and items with >= k interactions", ge=0))
    positive_threshold: float = field(default=3.0, metadata=doc("ratings strictly above this are positives"))
    split: typing.Literal["leave_one_out", "temporal"] = field(default="leave_one_out", metadata=doc(
        "leave_one_out (last positive = test, second last = valid) | temporal (per-user 80/10/10)"))
    tail_fraction: float = field(default=0.2, metadata=doc(
        "fraction of least-frequent training items called tail", gt=0.0, lt=1.0))
    max_history: int = field(default=50, metadata=doc("keep at most this many most recent history items", ge=1))
    keep_cold_items: bool = field(default=False, metadata=doc(
        "keep every item of the raw catalogue (item metadata), also those with no interaction left after "
        "k-core: popularity 0, never a target, still ranked, decoded and served", legacy=False))
    seed: int = field(default=0, metadata=doc("seed for the synthetic generator and any sampling"))
    synthetic_users: int = field(default=200, metadata=doc("synthetic generator: number of users", ge=2))
    synthetic_items: int = field(default=300, metadata=doc("synthetic generator: number of items", ge=10))
    synthetic_interactions: int = field(default=20, metadata=doc(
        "synthetic generator: mean interactions per user (not the total: about users x this rows; "
        "a mean >= synthetic_items means every user rates every item)", ge=1))
    columns: list[str] = field(default_factory=list, metadata=doc(
        "csv/parquet: column renames NAME=COLUMN for NAME in user,item,rating,timestamp,title,category "
        "(e.g. user=userId,item=movieId)"))

    def validate(self) -> None:
        if self.dataset == "synthetic":
            require(self.synthetic_interactions < self.synthetic_items, "synthetic_interactions",
                    f"is the mean number per user; {self.synthetic_interactions} >= synthetic_items="
                    f"{self.synthetic_items} would have every user rate every item "
                    f"({self.synthetic_users * self.synthetic_items:,} rows). For about T interactions in "
                    f"total use T / synthetic_users")
        for pair in self.columns:
            require("=" in pair, "columns", f"expected NAME=COLUMN, got {pair!r}")
