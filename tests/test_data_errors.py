"""Bad input: one clear DataError naming the file (and line), exit code 2, nothing written."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlhf_ray.cli import main
from rlhf_ray.data.prepared import load_prepared
from rlhf_ray.errors import DataError

GOOD_CSV = "user,item,rating,timestamp\n" + "".join(
    f"u{u},i{i},{1 + (u * i) % 5},{1000 + u * 10 + i}\n" for u in range(6) for i in range(6))


def snapshot(d: Path) -> dict[str, bytes] | None:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else None


@pytest.fixture(scope="module")
def existing_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("existing") / "prepared"
    assert main(["data", "prepare", "--dataset", "synthetic", "--synthetic-users", "20",
                 "--synthetic-items", "30", "--k-core", "2", "--out", str(out)]) == 0
    return out


def _csv(tmp: Path, text: str, name: str = "r.csv") -> list[str]:
    p = tmp / name
    p.write_bytes(gzip.compress(text.encode())) if name.endswith(".gz") else p.write_text(text)
    return ["--dataset", "csv", "--path", str(p)]


def _jsonl(tmp: Path, lines: list[str], name: str = "Beauty_5.json") -> Path:
    p = tmp / name
    text = "".join(line + "\n" for line in lines)
    p.write_bytes(gzip.compress(text.encode())) if name.endswith(".gz") else p.write_text(text)
    return p


def _review(u="A", i="B", r=5.0, t=1) -> str:
    return json.dumps({"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t})


def case_missing_file(tmp):
    return ["--dataset", "csv", "--path", str(tmp / "nope.csv")], [str(tmp / "nope.csv"), "not found"]


def case_missing_column(tmp):
    args = _csv(tmp, "user,item,timestamp\na,b,1\n")
    return args, ["r.csv", "missing column(s) ['rating']", "--columns"]


def case_wrong_grouplens_columns(tmp):
    d = tmp / "gl"
    d.mkdir()
    (d / "u.data").write_text("1\t2\t3\n1\t3\t4\n")
    (d / "u.item").write_text("")
    return ["--dataset", "ml-100k", "--path", str(d)], ["u.data", "expected 4"]


def case_non_numeric_rating_csv(tmp):
    args = _csv(tmp, "user,item,rating,timestamp\na,b,5,1\na,c,abc,2\n")
    return args, ["r.csv: line 3: rating 'abc' is not a number"]


def case_non_numeric_rating_grouplens(tmp):
    d = tmp / "gl"
    d.mkdir()
    (d / "u.data").write_text("1\t2\t3\t10\n\n1\t3\tfour\t11\n")
    (d / "u.item").write_text("")
    return ["--dataset", "ml-100k", "--path", str(d)], ["u.data: line 3: rating 'four' is not a number"]


def case_non_numeric_rating_json(tmp):
    p = _jsonl(tmp, [_review(), _review(i="C", r="five")])
    return ["--dataset", "amazon2014", "--path", str(p)], [f"{p}: line 2: rating 'five' is not a number"]


def case_truncated_gzip_json(tmp):
    p = _jsonl(tmp, [_review(u=f"u{k}", t=k) for k in range(2000)], name="Beauty_5.json.gz")
    p.write_bytes(p.read_bytes()[:-200])
    return ["--dataset", "amazon2018", "--path", str(p)], [str(p), "truncated or corrupt gzip"]


def case_truncated_gzip_csv(tmp):
    args = _csv(tmp, GOOD_CSV * 20, name="r.csv.gz")
    p = Path(args[-1])
    p.write_bytes(p.read_bytes()[:-30])
    return args, ["r.csv.gz", "truncated or corrupt gzip"]


def case_malformed_json(tmp):
    p = _jsonl(tmp, [_review(), _review(i="C"), '{"reviewerID": "A", "asin": ', _review(i="D")])
    return ["--dataset", "amazon2014", "--path", str(p)], [f"{p}: line 3: malformed JSON"]


def case_amazon_wrong_version(tmp):
    p = _jsonl(tmp, [json.dumps({"user_id": "U", "parent_asin": "P", "rating": 5.0, "timestamp": 1})])
    return ["--dataset", "amazon2014", "--path", str(p)], ["missing field(s)", "use --dataset amazon2023"]


def case_k_core_empties(tmp):
    return _csv(tmp, GOOD_CSV) + ["--k-core", "50"], ["k-core filtering (k_core=50) removed every interaction"]


def case_threshold_empties(tmp):
    return _csv(tmp, GOOD_CSV) + ["--k-core", "0", "--positive-threshold", "5"], [
        "leave_one_out split: no user has at least 2 ratings above positive_threshold=5.0"]


def case_unknown_dataset(tmp):
    return ["--dataset", "movielens-1b"], ["unknown dataset 'movielens-1b'", "ml-100k, amazon2014", "synthetic"]


def case_no_movielens_files(tmp):
    (tmp / "empty").mkdir()
    return ["--dataset", "ml-100k", "--path", str(tmp / "empty")], ["no MovieLens files", "data fetch ml-100k"]


def case_bad_config_value(tmp):
    return ["--dataset", "synthetic", "--tail-fraction", "2"], ["tail_fraction", "(0, 1)"]


def case_synthetic_interactions_is_per_user(tmp):
    return (["--dataset", "synthetic", "--synthetic-items", "1000", "--synthetic-interactions", "100000"],
            ["synthetic_interactions", "mean number per user", "200,000 rows", "T / synthetic_users"])


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input_exits_2_and_writes_nothing(case, tmp_path, existing_out, capsys):
    args, expected = case(tmp_path)
    before = snapshot(existing_out)
    for out in (tmp_path / "fresh", existing_out):
        assert main(["data", "prepare", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rlhf-ray data: error: ") and err.count("\n") == 1, err
        for text in expected:
            assert text in err, err
    assert not (tmp_path / "fresh").exists()
    assert snapshot(existing_out) == before
    assert [p.name for p in existing_out.parent.iterdir()] == ["prepared"]  # no temp dirs left


def test_duplicate_rows_are_dropped_and_counted(tmp_path):
    lines = GOOD_CSV.splitlines(keepends=True)
    args = _csv(tmp_path, "".join(lines + lines[1:4]))
    assert main(["data", "prepare", *args, "--k-core", "0", "--out", str(tmp_path / "p")]) == 0
    assert load_prepared(tmp_path / "p").stats["duplicates_dropped"] == 3


def test_refuses_to_replace_unrelated_directory(tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main(["data", "prepare", "--dataset", "synthetic", "--out", str(out)]) == 2
    assert "not a prepared data directory" in capsys.readouterr().err
    assert snapshot(out) == {"thesis.tex": b"precious"}


def test_stats_and_load_of_missing_directory(tmp_path, capsys):
    assert main(["data", "stats", str(tmp_path / "none")]) == 2
    assert "stats.json: not found" in capsys.readouterr().err
    with pytest.raises(DataError, match="run `rlhf-ray data prepare"):
        load_prepared(tmp_path / "none")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "stats.json").write_text("{}")
    with pytest.raises(DataError, match="interactions.parquet is missing"):
        load_prepared(tmp_path / "half")
