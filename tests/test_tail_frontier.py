"""bench/tail_frontier.py: popularity re-ranking moves the top-k toward the tail as beta grows, the
pooled curve is a ratio to SFT's unadjusted means, and the headline respects the NDCG guard."""
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import tail_frontier as tf  # noqa: E402


def test_beta_zero_is_the_plain_ranking_and_a_large_beta_prefers_the_tail():
    lp = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.4, 0.4, 0.1, 0.1]]))
    lp[1, 0] = -np.inf  # a seen item stays masked whatever beta does
    log_pop = np.log1p(np.array([100.0, 50.0, 2.0, 1.0]))
    assert tf.adjusted_topk(lp, log_pop, 0.0, 2).tolist() == [[0, 1], [1, 2]]
    top = tf.adjusted_topk(lp, log_pop, 5.0, 3)
    assert top[0, :2].tolist() == [3, 2] and 0 not in top[1].tolist()


def test_point_counts_tail_users_and_scores_each_split():
    lp = -np.tile(np.arange(30, dtype=float), (3, 1))  # everyone ranks 0, 1, 2, ...
    targets = np.array([[0], [5], [29]])
    tail_targets = np.array([[-1], [5], [29]])
    p = tf.point(lp, np.zeros(30), 0.0, targets, tail_targets)
    assert p["users"] == 3 and p["tail_users"] == 2
    assert abs(p["ndcg@10"] - (1 + 1 / np.log2(7)) / 3) < 1e-9  # ranks 1, 6 and beyond 10
    assert p["tail_recall@20"] == 0.5  # item 5 within 20, item 29 not


def test_pooled_ratios_and_the_guard():
    per_seed = [{0.0: {"ndcg@10": 0.10, "tail_recall@20": 0.20}, 0.5: {"ndcg@10": 0.095, "tail_recall@20": 0.30}},
                {0.0: {"ndcg@10": 0.12, "tail_recall@20": 0.20}, 0.5: {"ndcg@10": 0.117, "tail_recall@20": 0.26}}]
    base = {"ndcg@10": 0.11, "tail_recall@20": 0.20}
    curve = tf.pooled_curve(per_seed, base, [0.0, 0.5])
    assert curve[0]["ndcg_ratio"] == 1.0 and curve[0]["tail_ratio"] == 1.0
    assert abs(curve[1]["ndcg_ratio"] - 0.106 / 0.11) < 1e-9 and abs(curve[1]["tail_ratio"] - 1.4) < 1e-9
    assert tf.best_under_guard(curve, 0.99)["beta"] == 0.0  # 0.964x misses the guard
    assert tf.best_under_guard(curve, 0.95)["beta"] == 0.5
    assert tf.best_under_guard([{"beta": 1, "ndcg_ratio": 0.5, "tail_ratio": 2.0}], 0.99) is None


def test_missing_runs_are_named(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tail_frontier.py"), "--work", str(tmp_path),
                           "--seeds", "0"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and str(tmp_path / "seed0" / "sft") in proc.stderr
