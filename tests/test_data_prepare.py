"""Preparation: k-core, split positions, head/tail, indices, fingerprint, reading back, CLI."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from rlhf_ray.cli import main
from rlhf_ray.cliutil import add_config_args, add_config_file_arg, config_overrides, load_config
from rlhf_ray.config import Config, DataConfig, doc
from rlhf_ray.data.prepare import build, k_core, sorted_ids, split_positions, write
from rlhf_ray.data.prepared import PARQUET_FILES, fingerprint, load_prepared
from rlhf_ray.data.schema import RawData, empty_items
from rlhf_ray.errors import DataError


def raw_of(rows, items=None) -> RawData:
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    df = df.astype({"user": str, "item": str, "rating": float, "timestamp": "int64"})
    return RawData(df, items if items is not None else empty_items(), "test rows")


def quiet(_msg: str) -> None:
    pass


def test_k_core_cascades():
    # a, b rate x, y; c rates x, z; d rates z, w. k=2: w goes, then d, then z, then c.
    df = raw_of([("a", "x", 5, 1), ("a", "y", 5, 2), ("b", "x", 5, 3), ("b", "y", 5, 4),
                 ("c", "x", 5, 5), ("c", "z", 5, 6), ("d", "z", 5, 7), ("d", "w", 5, 8)]).interactions
    out = k_core(df, 2)
    assert sorted(zip(out["user"], out["item"])) == [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]
    assert len(k_core(df, 1)) == 8 and len(k_core(df, 0)) == 8
    assert k_core(df, 3).empty


def test_split_positions_leave_one_out_and_temporal():
    # user 0: positives (rating > 3) at 0, 2, 4 -> valid 2, test 4, end 5; user 1: one positive -> dropped
    ratings = np.array([5, 2, 4, 1, 5, 2, 1, 5, 2], dtype=float)
    offsets = np.array([0, 6, 9])
    vs, ts, end, keep = split_positions(ratings > 3, offsets, "leave_one_out")
    assert (vs[0], ts[0], end[0], keep[0]) == (2, 4, 5, True) and not keep[1]

    counts = np.array([10, 5, 20, 2, 3])
    vs, ts, end, keep = split_positions(np.ones(counts.sum(), bool), np.concatenate([[0], np.cumsum(counts)]),
                                        "temporal")
    assert vs.tolist()[:3] == [8, 3, 16] and ts.tolist()[:3] == [9, 4, 18] and end.tolist()[:3] == [10, 5, 20]
    assert keep.tolist() == [True, True, True, False, True]  # 2 interactions cannot be split; 3 can (1/1/1)


def test_build_on_hand_made_example(tmp_path):
    rows = [  # user "10": out of order in the file, a timestamp tie (file order kept), a duplicate row
        ("10", "b", 5, 300), ("10", "a", 2, 100), ("10", "c", 4, 200), ("10", "d", 5, 200),
        ("10", "a", 5, 400), ("10", "a", 5, 400),
        ("9", "c", 4, 10), ("9", "d", 5, 20), ("9", "b", 1, 30),
        ("2", "a", 1, 10),  # only negatives -> dropped by the split
    ]
    items = pd.DataFrame({"item": ["a", "b", "c", "d"], "title": ["A", "B", "", "D"],
                          "categories": [["x", "y"], [], ["z"], ["x"]]})
    cfg = DataConfig(dataset="csv", k_core=0, positive_threshold=3.0, tail_fraction=0.5)
    built = build(raw_of(rows, items), cfg, log=quiet)
    s = built.stats
    assert s["raw"] == {"users": 3, "items": 4, "interactions": 10}
    assert s["duplicates_dropped"] == 1 and s["users_dropped_by_split"] == 1
    assert s["prepared"]["users"] == 2 and s["prepared"]["interactions"] == 8

    write(built, tmp_path / "p")
    data = load_prepared(tmp_path / "p")
    assert data.users["user"].tolist() == ["9", "10"]  # numeric order, not "10" < "9"
    seq = data.sequences.set_index("user_idx")
    # user "10" chronological: a(100,2) c(200,4) d(200,5) b(300,5) a(400,5); items a=0 b=1 c=2 d=3
    assert seq.loc[1, "items"].tolist() == [0, 2, 3, 1, 0]
    assert seq.loc[1, "ratings"].tolist() == [2, 4, 5, 5, 5]
    assert seq.loc[1, "timestamps"].tolist() == [100, 200, 200, 300, 400]
    assert (seq.loc[1, "valid_start"], seq.loc[1, "test_start"], seq.loc[1, "end"]) == (3, 4, 5)
    # user "9": c(4) d(5) b(1) -> positives at 0, 1
    assert (seq.loc[0, "valid_start"], seq.loc[0, "test_start"], seq.loc[0, "end"]) == (0, 1, 2)

    # popularity = training interactions: "9" has none (valid_start 0); "10": a, c, d
    assert data.popularity.tolist() == [1, 0, 1, 1]
    # ceil(0.5 * 4) = 2 tail items: (pop, idx) ascending -> b(0,1), a(1,0)
    assert data.is_tail.tolist() == [True, True, False, False]
    assert s["head_tail"]["tail_items"] == 2 and s["head_tail"]["head_items"] == 2
    assert data.items["category"].tolist() == ["x", "unknown", "z", "x"]
    assert data.items["title"].tolist() == ["A", "B", "", "D"]
    assert data.category_names == ["unknown", "x", "z"]
    assert data.item_categories.tolist() == [1, 0, 2, 1]

    valid = data.histories("valid")
    assert valid.user_idx.tolist() == [0, 1]
    assert valid.histories == [[], [0, 2, 3]] and valid.targets == [[2], [1]] and valid.target_ratings == [[4.0], [5.0]]
    test = data.histories("test", max_history=2)
    assert test.histories == [[2], [3, 1]] and test.targets == [[3], [0]]
    train = data.histories("train")
    assert train.user_idx.tolist() == [1] and train.histories == [[0, 2, 3]] and train.targets == [[]]
    inter = data.interactions()
    assert list(inter.columns) == ["user", "item", "rating", "timestamp"] and len(inter) == 8


def test_histories_skip_users_without_positive_target(tmp_path):
    # temporal split of 10: valid = position 8, test = position 9; user 1's valid item is a negative
    rows = [("1", str(i), 5 if i != 8 else 1, i) for i in range(10)]
    rows += [("2", str(i), 5, i) for i in range(10)]
    write(build(raw_of(rows), DataConfig(dataset="csv", k_core=0, split="temporal"), log=quiet), tmp_path / "p")
    data = load_prepared(tmp_path / "p")
    assert data.histories("valid").user_idx.tolist() == [1]
    assert data.histories("test").user_idx.tolist() == [0, 1]
    assert data.histories("test").histories[0] == list(range(9))


def test_sorted_ids_numeric_aware():
    assert sorted_ids(np.array(["10", "9", "100", "9"])).tolist() == ["9", "10", "100"]
    assert sorted_ids(np.array(["b10", "b9", "a"])).tolist() == ["a", "b10", "b9"]


def test_head_tail_counts_on_synthetic(tmp_path):
    cfg = DataConfig(dataset="synthetic", synthetic_users=60, synthetic_items=50, synthetic_interactions=12,
                     tail_fraction=0.3, k_core=2)
    from rlhf_ray.data.sources import load_raw

    stats = write(build(load_raw(cfg), cfg, log=quiet), tmp_path / "p")
    data = load_prepared(tmp_path / "p")
    n = data.n_items
    assert data.is_tail.sum() == int(np.ceil(0.3 * n)) == stats["head_tail"]["tail_items"]
    assert data.popularity[data.is_tail].max() <= data.popularity[~data.is_tail].min()
    assert data.popularity.sum() == stats["split"]["train_interactions"]


def test_keep_cold_items_keeps_the_whole_catalogue(tmp_path):
    from rlhf_ray.data.sources import load_raw

    cfg = DataConfig(dataset="synthetic", synthetic_users=40, synthetic_items=500, synthetic_interactions=6, k_core=0)
    raw = load_raw(cfg)
    plain = build(raw, cfg, log=quiet)
    assert plain.tables["items"].num_rows < 500 and "cold_items" not in plain.stats["prepared"]
    cold = cfg.replace(keep_cold_items=True)
    stats = write(build(raw, cold, log=quiet), tmp_path / "p")
    data = load_prepared(tmp_path / "p")
    assert data.n_items == 500 and data.items["item"].tolist() == [str(i) for i in range(1, 501)]
    n_cold = 500 - plain.tables["items"].num_rows
    assert stats["prepared"]["cold_items"] == n_cold == int((data.popularity == 0).sum() - (
        (plain.tables["items"].column("popularity").to_numpy() == 0).sum()))
    assert data.items.loc[data.popularity == 0, "title"].str.contains("item").all()  # metadata kept
    seqs = np.concatenate(data.sequences["items"].tolist())
    interacted = set(plain.tables["items"].column("item").to_pylist())
    assert set(data.items["item"].to_numpy()[seqs]) == interacted  # cold items are never in a sequence


def test_fingerprint_deterministic_and_verified(tmp_path):
    args = ["data", "prepare", "--dataset", "synthetic", "--synthetic-users", "40", "--synthetic-items", "60",
            "--k-core", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert main([*args, "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    fa, fb, fc = (json.loads((tmp_path / d / "stats.json").read_text())["fingerprint"] for d in "abc")
    assert fa == fb != fc
    for name in PARQUET_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert fingerprint(tmp_path / "a") == fa == load_prepared(tmp_path / "a").fingerprint

    # re-preparing onto an existing directory replaces it; tampering is caught on load
    assert main([*args, "--seed", "1", "--out", str(tmp_path / "a")]) == 0
    assert load_prepared(tmp_path / "a").fingerprint == fc
    pd.DataFrame({"user": ["x"], "user_idx": [0]}).to_parquet(tmp_path / "a" / "users.parquet")
    with pytest.raises(DataError, match="fingerprint"):
        load_prepared(tmp_path / "a")
    assert load_prepared(tmp_path / "a", verify=False).n_users == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp dirs left behind


def test_cli_config_file_flags_and_stats(tmp_path, capsys):
    (tmp_path / "data.yaml").write_text("data:\n  dataset: synthetic\n  k_core: 3\n  synthetic_users: 30\n")
    out = tmp_path / "prep"
    rc = main(["data", "prepare", "--config", str(tmp_path / "data.yaml"), "--config-key", "data",
               "--k_core", "2", "--split", "temporal", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "30 users" in printed and "fingerprint:" in printed
    cfg = load_prepared(out).config
    assert (cfg.k_core, cfg.split, cfg.synthetic_users, cfg.dataset) == (2, "temporal", 30, "synthetic")
    assert main(["data", "stats", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["k_core"] == 2


@dataclass
class _Inner(Config):
    width: int = field(default=4, metadata=doc("inner width"))
    enabled: bool = field(default=False, metadata=doc("a switch"))


@dataclass
class _Outer(Config):
    name: str = field(default="x", metadata=doc("a name"))
    rate: float | None = field(default=None, metadata=doc("a rate"))
    tags: list[str] = field(default_factory=list, metadata=doc("tags"))
    inner: _Inner = field(default_factory=_Inner, metadata=doc("nested"))


def test_cliutil_flags_from_any_config(tmp_path):
    p = argparse.ArgumentParser()
    add_config_file_arg(p)
    add_config_args(p, _Outer)
    args = p.parse_args(["--rate", "0.5", "--tags", "a,b", "--inner.width", "8", "--inner.enabled"])
    assert config_overrides(args, _Outer) == {"rate": "0.5", "tags": "a,b", "inner": {"width": "8", "enabled": True}}
    (tmp_path / "c.yaml").write_text("name: y\ninner:\n  width: 2\n  enabled: false\n")
    args = p.parse_args(["--config", str(tmp_path / "c.yaml"), "--inner.width", "8"])
    cfg = load_config(_Outer, args)
    assert (cfg.name, cfg.rate, cfg.inner.width, cfg.inner.enabled) == ("y", None, 8, False)
    assert "inner width" in p.format_help()
