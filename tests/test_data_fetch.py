"""``data fetch``: cache layout, atomicity, --from sources; the real download only under ``slow``."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from rlhf_ray.cli import main
from rlhf_ray.data.fetch import WHEEL_DIR, default_cache, fetch
from rlhf_ray.data.movielens import ML100K_GENRES
from rlhf_ray.data.prepared import load_prepared
from rlhf_ray.errors import DataError

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"{u}\t{i}\t{1 + (u + i) % 5}\t{880000000 + 100 * u + i}\n" for u in range(1, 11) for i in range(1, 9))
ITEM = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
    f"{i}\tMovie {i}\t1990\tDrama Comedy\n" for i in range(1, 9))


def fake_wheel(d: Path, with_data: bool = True) -> Path:
    whl = d / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("recbole/__init__.py", "")
        if with_data:
            z.writestr(WHEEL_DIR + "ml-100k.inter", INTER)
            z.writestr(WHEEL_DIR + "ml-100k.item", ITEM)
            z.writestr(WHEEL_DIR + "ml-100k.user", "user_id:token\n")
    return whl


def grouplens_zip(d: Path) -> Path:
    z = d / "ml-100k.zip"
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)  # Drama
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ml-100k/u.data", "".join(line.replace(".0", "") + "\n" for line in INTER.splitlines()[1:]))
        zf.writestr("ml-100k/u.item", "".join(f"{i}|Movie {i} (1990)|01-Jan-1990||http://x|{flags}\n"
                                              for i in range(1, 9)))
        zf.writestr("ml-100k/u.genre", "".join(f"{g}|{k}\n" for k, g in enumerate(ML100K_GENRES)))
        zf.writestr("ml-100k/u1.base", "ignored")
    return z


def test_fetch_with_downloader_then_noop(tmp_path):
    calls, logs = [], []

    def download(d: Path) -> Path:
        calls.append(d)
        return fake_wheel(d)

    cache = tmp_path / "cache" / "ml-100k"
    assert fetch("ml-100k", cache=cache, download=download, log=logs.append) == cache
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert "10 users, 8 items, 80 ratings" in logs[-1]
    fetch("ml-100k", cache=cache, download=download, log=logs.append)
    assert len(calls) == 1 and "nothing to do" in logs[-1]
    assert sorted(p.name for p in cache.parent.iterdir()) == ["ml-100k"]


def test_concurrent_fetch_that_wins_the_race_is_kept(tmp_path):
    """Two seeds' pipelines started together both download; the one that finishes second finds
    the cache already complete (it failed with 'Directory not empty' before) and keeps it."""
    cache = tmp_path / "ml-100k"
    logs = []

    def download(d: Path) -> Path:
        fetch("ml-100k", cache=cache, download=fake_wheel, log=lambda m: None)  # the other process wins
        return fake_wheel(d)

    assert fetch("ml-100k", cache=cache, download=download, log=logs.append) == cache
    assert "10 users, 8 items, 80 ratings" in logs[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-100k"]  # no temp directory left
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    umask = os.umask(0)
    os.umask(umask)
    assert cache.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_failed_download_leaves_no_cache(tmp_path):
    cache = tmp_path / "ml-100k"
    with pytest.raises(DataError, match="does not contain"):
        fetch("ml-100k", cache=cache, download=lambda d: fake_wheel(d, with_data=False), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_cli_fetch_from_grouplens_zip_into_env_cache_then_prepare(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_RAY_CACHE", str(tmp_path / "root"))
    assert default_cache() == tmp_path / "root" / "ml-100k"
    assert main(["data", "fetch", "ml-100k", "--from", str(grouplens_zip(tmp_path))]) == 0
    assert sorted(p.name for p in default_cache().iterdir()) == ["u.data", "u.genre", "u.item"]
    assert main(["data", "fetch", "ml-100k"]) == 0  # already there: no download attempted
    assert "nothing to do" in capsys.readouterr().out
    assert main(["data", "prepare", "--dataset", "ml-100k", "--k-core", "2", "--out", str(tmp_path / "p")]) == 0
    assert "GroupLens ml-100k at" in capsys.readouterr().out
    data = load_prepared(tmp_path / "p")
    assert data.stats["raw"] == {"users": 10, "items": 8, "interactions": 80}
    assert set(data.items["category"]) == {"Drama"}


def test_cli_fetch_from_wheel_and_errors(tmp_path, capsys):
    cache = tmp_path / "c"
    assert main(["data", "fetch", "ml-100k", "--cache", str(cache), "--from", str(fake_wheel(tmp_path))]) == 0
    assert (cache / "ml-100k.inter").read_text() == INTER

    assert main(["data", "fetch", "ml-1m", "--cache", str(tmp_path / "x")]) == 2
    assert "fetchable datasets are ['ml-100k']" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(["data", "fetch", "ml-100k", "--cache", str(other), "--from", str(fake_wheel(tmp_path))]) == 2
    assert "does not hold ml-100k" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    assert main(["data", "fetch", "ml-100k", "--cache", str(tmp_path / "y"), "--from", str(tmp_path / "no.zip")]) == 2
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_real_ml100k_fetch_and_prepare(tmp_path, monkeypatch, capsys):
    """Downloads the RecBole wheel from PyPI (about 2 MB of data inside)."""
    monkeypatch.setenv("RLHF_RAY_CACHE", str(tmp_path / "cache"))
    assert main(["data", "fetch", "ml-100k"]) == 0
    assert main(["data", "prepare", "--dataset", "ml-100k", "--out", str(tmp_path / "p")]) == 0
    assert "943 users, 1682 items, 100000 ratings" in capsys.readouterr().out
    data = load_prepared(tmp_path / "p")
    assert data.stats["raw"] == {"users": 943, "items": 1682, "interactions": 100000}
    assert data.n_users == data.stats["prepared"]["users"] > 900
    assert len(data.histories("test").user_idx) == data.n_users  # leave-one-out: every user has a test target
    assert json.loads((tmp_path / "p" / "stats.json").read_text())["fingerprint"] == data.fingerprint
