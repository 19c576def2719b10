"""Readers: each source format, on small files written here (never the real datasets)."""
from __future__ import annotations

import ast
import gzip
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from rlhf_ray.config import DataConfig
from rlhf_ray.data.amazon import read_amazon, strip_common_root
from rlhf_ray.data.movielens import ML100K_GENRES, read_movielens
from rlhf_ray.data.sources import DATASETS, load_raw
from rlhf_ray.data.synthetic import generate
from rlhf_ray.data.tables import read_table
from rlhf_ray.errors import DataError


def check_frame(df: pd.DataFrame) -> None:
    assert list(df.columns) == ["user", "item", "rating", "timestamp"]
    assert df["rating"].dtype == np.float64 and df["timestamp"].dtype == np.int64
    assert all(isinstance(x, str) for x in df["user"]) and all(isinstance(x, str) for x in df["item"])


def write_grouplens(d, genre_file=True):
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.data").write_text("1\t10\t4\t881250949\n2\t10\t2\t881250950\n\n1\t20\t5\t881250951\n")
    flags = ["0"] * 19
    f10 = flags.copy()
    f10[1] = f10[8] = "1"  # Action, Drama
    rows = ["10|Misérables, Les (1995)|01-Jan-1995||http://x|" + "|".join(f10),
            "20|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags)]
    (d / "u.item").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    if genre_file:
        (d / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n")
    return d


def test_grouplens_dir_and_zip(tmp_path):
    d = write_grouplens(tmp_path / "ml-100k")
    raw = read_movielens(d)
    check_frame(raw.interactions)
    assert raw.interactions["item"].tolist() == ["10", "10", "20"]
    assert raw.interactions["rating"].tolist() == [4.0, 2.0, 5.0]
    items = raw.items.set_index("item")
    assert items.loc["10", "title"] == "Misérables, Les (1995)"
    assert items.loc["10", "categories"] == ["Action", "Drama"]
    assert items.loc["20", "categories"] == []

    z = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in d.iterdir():
            zf.write(f, f"ml-100k/{f.name}")
    raw_zip = read_movielens(z)
    pd.testing.assert_frame_equal(raw_zip.interactions, raw.interactions)
    assert raw_zip.items["categories"].tolist() == raw.items["categories"].tolist()
    assert read_movielens(tmp_path).counts() == {"users": 2, "items": 2, "interactions": 3}  # finds ml-100k/


def test_grouplens_without_genre_file_uses_fixed_list(tmp_path):
    raw = read_movielens(write_grouplens(tmp_path / "gl", genre_file=False))
    assert raw.items.set_index("item").loc["10", "categories"] == ["Action", "Drama"]


def test_recbole_atomic_files(tmp_path):
    (tmp_path / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n")
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy\n302\tL.A. \"Confidential\"\t1997\tCrime Film-Noir Mystery Thriller\n")
    for p in (tmp_path, tmp_path / "ml-100k.inter"):
        raw = read_movielens(p)
        check_frame(raw.interactions)
        assert raw.interactions["rating"].tolist() == [3.0, 3.5]
        assert raw.interactions["timestamp"].tolist() == [881250949, 891717742]
        items = raw.items.set_index("item")
        assert items.loc["302", "title"] == 'L.A. "Confidential"'
        assert items.loc["302", "categories"] == ["Crime", "Film-Noir", "Mystery", "Thriller"]
        assert "RecBole" in raw.source


def _jsonl(path, records, literal=False):
    text = "".join((repr(r) if literal else json.dumps(r)) + "\n" for r in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_amazon_2014_gz_with_python_literal_meta(tmp_path):
    reviews = _jsonl(tmp_path / "reviews_Beauty_5.json.gz", [
        {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1300000000, "reviewText": "ok"},
        {"reviewerID": "A2", "asin": "B02", "overall": 2.0, "unixReviewTime": 1300000100},
    ])
    meta = _jsonl(tmp_path / "meta_Beauty.json.gz", [
        {"asin": "B01", "title": "Soap &amp; Co", "categories": [["Beauty", "Skin Care", "Face"], ["Beauty", "X"]]},
        {"asin": "B02", "categories": [["Beauty", "Makeup"]]},
        {"asin": "B99", "title": "never reviewed", "categories": [["Beauty", "Hair"]]},
    ], literal=True)
    with pytest.raises(json.JSONDecodeError):  # really Python literals, as in the wild
        json.loads(gzip.decompress(meta.read_bytes()).decode().splitlines()[0])
    assert ast.literal_eval(gzip.decompress(meta.read_bytes()).decode().splitlines()[0])["asin"] == "B01"

    raw = read_amazon(reviews, "amazon2014")  # meta_Beauty.json.gz found beside the reviews
    check_frame(raw.interactions)
    assert raw.interactions["user"].tolist() == ["A1", "A2"]
    items = raw.items.set_index("item")
    assert set(items.index) == {"B01", "B02"}
    assert items.loc["B01", "title"] == "Soap & Co"
    assert items.loc["B01", "categories"] == ["Skin Care", "Face"]  # shared root "Beauty" dropped
    assert items.loc["B02", "categories"] == ["Makeup"]
    assert items.loc["B02", "title"] == ""


def test_amazon_2018_plain_json_with_category_field(tmp_path):
    reviews = _jsonl(tmp_path / "All_Beauty_5.json", [
        {"reviewerID": "U1", "asin": "X1", "overall": 4.0, "unixReviewTime": 1500000000, "vote": "2"},
        {"reviewerID": "U1", "asin": "X2", "overall": 1.0, "unixReviewTime": 1500000001},
    ])
    meta = _jsonl(tmp_path / "other_meta.json", [
        {"asin": "X1", "title": "Brush", "category": ["All Beauty", "Tools"]},
        {"asin": "X2", "title": "Cream", "category": ["All Beauty", "Skin"]},
    ])
    raw = load_raw(DataConfig(dataset="amazon2018", path=str(reviews), meta_path=str(meta)))
    check_frame(raw.interactions)
    assert raw.items.set_index("item")["categories"].to_dict() == {"X1": ["Tools"], "X2": ["Skin"]}


def test_amazon_2023_ms_timestamps_and_meta(tmp_path):
    reviews = _jsonl(tmp_path / "All_Beauty.jsonl.gz", [
        {"user_id": "U1", "parent_asin": "P2", "asin": "c2", "rating": 5.0, "timestamp": 1588615855070},
        {"user_id": "U1", "parent_asin": "P1", "asin": "c1", "rating": 3.0, "timestamp": 1588615855010},
        {"user_id": "U2", "parent_asin": "P1", "asin": "c1", "rating": 4.0, "timestamp": 1600000000999},
    ])
    _jsonl(tmp_path / "meta_All_Beauty.jsonl", [
        {"parent_asin": "P1", "title": "Lipstick", "categories": [], "main_category": "All Beauty"},
        {"parent_asin": "P2", "title": "Mascara", "categories": ["Makeup", "Eyes"], "main_category": "All Beauty"},
    ])
    raw = read_amazon(reviews, "amazon2023")
    check_frame(raw.interactions)
    # same second: the ms order (P1 before P2) survives as row order
    assert raw.interactions["item"].tolist() == ["P1", "P2", "P1"]
    assert raw.interactions["timestamp"].tolist() == [1588615855, 1588615855, 1600000000]
    items = raw.items.set_index("item")
    assert items.loc["P1", "categories"] == ["All Beauty"] and items.loc["P2", "categories"] == ["Makeup", "Eyes"]


def test_amazon_missing_relative_file_is_not_taken_for_a_hub_name():
    with pytest.raises(DataError, match="file not found"):
        read_amazon("no-such-dir/Beauty_5.json.gz", "amazon2014")


def test_strip_common_root():
    assert strip_common_root([["A", "B", "C"], ["A", "B", "D"], []]) == [["C"], ["D"], []]
    assert strip_common_root([["A", "B"], ["A"]]) == [["A", "B"], ["A"]]  # never empties a path
    assert strip_common_root([["A", "B"], ["C", "D"]]) == [["A", "B"], ["C", "D"]]


def test_csv_with_column_map_and_categories(tmp_path):
    p = tmp_path / "ratings.csv"
    p.write_text("userId,movieId,score,ts,title,category\n"
                 "u1,m1,4.5,2019-03-01,Heat,Crime|Thriller\n"
                 "u2,m1,3,1551398400,Heat,Crime|Thriller\n"
                 "u2,m2,1,1551398401,\"Lock, Stock\",\n")
    cfg = DataConfig(dataset="csv", path=str(p), columns=["user=userId", "item=movieId", "rating=score",
                                                         "timestamp=ts"])
    with pytest.raises(DataError, match="line 2: timestamp '2019-03-01'"):  # mixed dates and numbers
        load_raw(cfg)
    p.write_text(p.read_text().replace("2019-03-01", "1551398399"))
    raw = load_raw(cfg)
    check_frame(raw.interactions)
    assert raw.interactions["rating"].tolist() == [4.5, 3.0, 1.0]
    items = raw.items.set_index("item")
    assert items.loc["m1", "categories"] == ["Crime", "Thriller"] and items.loc["m2", "categories"] == []
    assert items.loc["m2", "title"] == "Lock, Stock"  # CSV quoting honoured

    dates = tmp_path / "dates.csv.gz"
    dates.write_bytes(gzip.compress(b"user,item,rating,timestamp\na,b,5,2019-03-01\na,c,4,2019-03-02T00:00:01\n"))
    raw = read_table(dates, "csv")
    assert raw.interactions["timestamp"].tolist() == [1551398400, 1551484801]


def test_parquet_with_list_categories(tmp_path):
    p = tmp_path / "x.parquet"
    pd.DataFrame({"user": [1, 2], "item": [7, 8], "rating": [5, 1], "timestamp": [10, 20],
                  "category": [["A", "B"], []]}).to_parquet(p)
    raw = load_raw(DataConfig(dataset="parquet", path=str(p)))
    check_frame(raw.interactions)
    assert raw.interactions["user"].tolist() == ["1", "2"]
    assert raw.items.set_index("item")["categories"].to_dict() == {"7": ["A", "B"], "8": []}


def test_synthetic_is_seeded_and_power_law():
    a, b, c = generate(50, 100, 15, seed=1), generate(50, 100, 15, seed=1), generate(50, 100, 15, seed=2)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    assert not a.interactions.equals(c.interactions)
    check_frame(a.interactions)
    assert set(a.interactions["rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    counts = np.sort(a.interactions["item"].value_counts().to_numpy())[::-1]
    assert counts[:10].sum() > 0.25 * counts.sum()  # top 10% of items: well over 10% of interactions
    assert not a.interactions.duplicated(["user", "item"]).any()
    assert len(a.items) == 100 and all(len(c) >= 1 for c in a.items["categories"])


def test_synthetic_by_category_draws_follow_the_item_weights():
    from rlhf_ray.data.synthetic import _ByCategory

    rng = np.random.default_rng(0)
    n_items, n_cat = 200, 5
    cat = rng.integers(n_cat, size=n_items)
    w = 1.0 / (1.0 + rng.permutation(n_items))
    affinity = np.array([0.6, 0.05, 0.2, 0.1, 0.05]) + 0.05
    draws = _ByCategory(cat, w, n_cat).draw(rng, affinity, 300_000)
    p = w * affinity[cat] / (w * affinity[cat]).sum()  # what the dense Gumbel draw uses
    freq = np.bincount(draws, minlength=n_items) / len(draws)
    assert np.abs(freq - p).max() < 4e-3


def test_synthetic_large_catalogue_memory_is_linear():
    """500 users over 100k items: nothing users x items (400 MB as float64) or items x items is built."""
    import tracemalloc

    tracemalloc.start()
    try:
        raw = generate(500, 100_000, 20, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150e6, peak
    inter = raw.interactions
    assert len(raw.items) == 100_000 and inter["item"].astype(int).between(1, 100_000).all()
    assert not inter.duplicated(["user", "item"]).any()
    counts = np.sort(inter["item"].value_counts().to_numpy())[::-1]
    assert counts[:1000].sum() > 0.3 * counts.sum()  # the Zipf head: 1% of items, far over 1% of rows
    pd.testing.assert_frame_equal(inter, generate(500, 100_000, 20, seed=0).interactions)


def test_dataset_registry_matches_config_help():
    help_text = DataConfig.__dataclass_fields__["dataset"].metadata["help"]
    for name in DATASETS:
        assert name in help_text
