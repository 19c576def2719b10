"""``rlhf-ray data {fetch,prepare,stats}``.

    rlhf-ray data fetch ml-100k [--cache DIR] [--from PATH]
    rlhf-ray data prepare --dataset ml-100k --out data/ml-100k [--config data.yaml] [--k-core 5 ...]
    rlhf-ray data stats data/ml-100k
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlhf_ray.cliutil import add_config_args, add_config_file_arg, load_config
from rlhf_ray.config import DataConfig
from rlhf_ray.errors import DataError


def _fetch(args: argparse.Namespace) -> int:
    from rlhf_ray.data.fetch import fetch

    fetch(args.name, cache=args.cache, source=args.from_path)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from rlhf_ray.data.prepare import prepare

    cfg = load_config(DataConfig, args, key=args.config_key)
    prepare(cfg, args.out)
    return 0


def _stats(args: argparse.Namespace) -> int:
    path = Path(args.dir).expanduser() / "stats.json"
    if not path.is_file():
        raise DataError(f"{path}: not found (is {args.dir} a prepared data directory?)")
    print(json.dumps(json.loads(path.read_text()), indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="fetch and prepare datasets",
                                 description="Fetch raw datasets and prepare them for training.")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("fetch", help="download a dataset into the local cache",
                       description="Download a dataset into the local cache (atomic; no-op if present).")
    p.add_argument("name", help="dataset to fetch: ml-100k")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="directory to hold the files (default: $RLHF_RAY_CACHE/<name>, "
                        "RLHF_RAY_CACHE defaulting to ~/.cache/rlhf-ray)")
    p.add_argument("--from", dest="from_path", metavar="PATH", default=None,
                   help="copy from a GroupLens ml-100k.zip/dir, a RecBole dir or wheel instead of downloading")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("prepare", help="filter, split and write a dataset as Parquet",
                       description="Filter (dedup, k-core), split and write a prepared data directory.")
    p.add_argument("--out", required=True, metavar="DIR", help="prepared data directory to (re)write")
    add_config_file_arg(p)
    p.add_argument("--config-key", default=None, metavar="KEY",
                   help="read the config file's KEY section (e.g. data) instead of its top level")
    add_config_args(p, DataConfig)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("stats", help="print a prepared directory's stats.json")
    p.add_argument("dir", metavar="DIR", help="prepared data directory")
    p.set_defaults(func=_stats)
