"""bench/reward_judges.py: count-based judges of the reward model's held-out pairs. The rating judge
is order-aware and reads no held-out user's rating; ties count a half; the whole bench runs on a
real pipeline run (the smoke run's reward model and pair file) and names what is missing."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import reward_judges as rj  # noqa: E402


def test_dcg_rewards_the_better_item_first_and_skips_padding():
    q = np.array([[5.0, 3.0, 0.0], [3.0, 5.0, 0.0]])
    mask = np.array([[True, True, False], [True, True, False]])
    d = rj.dcg(q, mask)
    assert d[0] > d[1]
    assert abs(d[0] - (5.0 + 3.0 / np.log2(3))) < 1e-12
    assert rj.dcg(np.array([[1.0, 9.0]]), np.array([[True, False]]))[0] == 1.0


def test_item_stats_read_only_training_users_and_their_training_range():
    seqs = pd.DataFrame({"user_idx": [0, 1, 2], "items": [[0, 1, 2], [0, 1], [1, 0]],
                         "ratings": [[5.0, 1.0, 5.0], [5.0, 1.0], [1.0, 1.0]], "valid_start": [2, 2, 2]})
    q, n = rj.item_stats(seqs, {0, 1}, 3, shrink=0.0)
    assert q[0] == 5.0 and q[1] == 1.0  # user 2 (held out) never counts
    assert q[2] == 3.0  # item 2 sits past valid_start, unread: the global mean of (5, 1, 5, 1)
    assert n.tolist() == [2.0, 2.0, 0.0]  # popularity: the training users' training ranges only
    shrunk, _ = rj.item_stats(seqs, {0, 1}, 3, shrink=2.0)
    assert abs(shrunk[0] - (10.0 + 6.0) / 4.0) < 1e-12 and shrunk[2] == 3.0


def test_ties_count_half():
    assert rj.wins(np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]


def test_per_user_means_and_family_summary_pairs_rating_with_the_model():
    users = np.array([3, 3, 7, 7])
    fam = np.array(["ranking", "relevance", "ranking", "relevance"])
    w = {"rating": np.array([1.0, 0.0, 1.0, 1.0]), "reward_model": np.array([0.0, 1.0, 0.0, 1.0]),
         "popularity": np.ones(4), "spread": np.zeros(4), "ppo_reward": np.ones(4)}
    assert rj.per_user(w["rating"], users, np.array([3, 7])).tolist() == [0.5, 1.0]
    s = rj.family_summary([(w, fam, users)])
    assert list(s) == ["overall", "relevance", "ranking"]
    assert s["ranking"]["rating"]["mean"] == 1.0 and s["ranking"]["reward_model"]["mean"] == 0.0
    assert s["ranking"]["n_pairs"] == [2] and s["ranking"]["n_users"] == [2]
    assert s["ranking"]["rating_vs_reward_model"][0]["diff"] == 1.0


def test_the_bench_on_a_real_run(smoke_run, tmp_path):
    run, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    work = tmp_path / "work"
    work.mkdir()
    (work / "seed0").symlink_to(run, target_is_directory=True)
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "reward_judges.py"), "--work", str(work),
                          "--seeds", "0", "--results", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "reward_judges.json").read_text())
    fams = doc["families"]
    assert "overall" in fams and "diversity" in fams
    for row in fams.values():
        for j in ("reward_model", "ppo_reward", *rj.JUDGES):
            assert 0.0 <= row[j]["mean"] <= 1.0
    # the diversity family lowers category entropy by construction: the spread judge never prefers it
    assert fams["diversity"]["spread"]["mean"] == 1.0
    assert fams["ranking"]["spread"]["mean"] == 0.5  # same items, order-blind judge: every pair a tie
    assert doc["provenance"]["inputs"]["seed0/reward"]["kind"] == "checkpoint"
    assert doc["provenance"]["inputs"]["seed0/reward.pairs.parquet"]["kind"] == "file"
    assert "| overall |" in doc["markdown"]


def test_missing_runs_are_named(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "reward_judges.py"), "--work", str(tmp_path),
                           "--seeds", "0"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and str(tmp_path / "seed0" / "reward") in proc.stderr


def test_a_run_without_ppo_is_named(smoke_run, tmp_path):
    """The ppo_reward judge needs the reward section PPO trained with: no silent default."""
    run, _ = smoke_run
    seed = tmp_path / "work" / "seed0"
    seed.mkdir(parents=True)
    for name in ("reward", "data", "reward.pairs.parquet"):
        (seed / name).symlink_to(run / name)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "reward_judges.py"), "--work", str(tmp_path / "work"),
                           "--seeds", "0", "--results", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode != 0 and str(seed / "ppo" / "manifest.json") in proc.stderr
    assert not (tmp_path / "reward_judges.json").exists()
