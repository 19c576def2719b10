"""The alignment targets: ratios of per-user means on the same users, paired intervals, verdict rows."""
import numpy as np
import pandas as pd
import pytest

from rlhf_ray import targets


def _frame(users, **cols):
    return pd.DataFrame({"user_idx": users, **cols})


def test_ratios_are_over_users_both_stages_have_and_met_follows_the_bound():
    rng = np.random.default_rng(0)
    n = 400
    users = np.arange(n)
    base = rng.random(n)
    tail = np.where(users % 2 == 0, rng.random(n), np.nan)  # only even users are tail users
    sft = _frame(users, **{"page_ndcg@10": base, "recall@20": base, "page_ild@10": base,
                           "tail_recall@20": tail, "ndcg@10": base})
    ppo = _frame(users[::-1], **{"page_ndcg@10": (base * 1.5)[::-1], "recall@20": (base * 0.9)[::-1],
                                 "page_ild@10": (base * 1.06)[::-1], "tail_recall@20": tail[::-1],
                                 "ndcg@10": base[::-1]})  # other row order: joined on user_idx
    lpo = _frame(users[:300], **{"page_ndcg@10": base[:300], "recall@20": base[:300], "page_ild@10": base[:300],
                                 "tail_recall@20": tail[:300] * 2, "ndcg@10": base[:300] * 0.98})
    rows = {r["target"]: r for r in targets.check({"sft": sft, "ppo": ppo, "lpo": lpo}, hacking_alerts=2)}
    r = rows["ppo page_ndcg@10 >= 1.00x sft"]
    assert r["ratio"] == pytest.approx(1.5) and r["met"] and r["verdict"] == "higher" and r["users"] == n
    r = rows["ppo recall@20 >= 1.00x sft"]
    assert r["ratio"] == pytest.approx(0.9) and r["met"] is False and r["verdict"] == "lower"
    assert rows["ppo page_ild@10 >= 1.05x sft"]["met"]
    r = rows["lpo tail_recall@20 >= 1.50x sft"]  # tail users of the 300 LPO has
    assert r["users"] == 150 and r["ratio"] == pytest.approx(2.0) and r["met"]
    r = rows["lpo ndcg@10 >= 0.99x sft"]
    assert r["users"] == 300 and r["ratio"] == pytest.approx(0.98) and r["met"] is False
    assert rows["ppo: one of its gains beyond the interval"]["met"]
    assert rows["ppo: hacking monitor silent"]["met"] is False
    text = targets.format_rows(list(rows.values()))
    assert all(t in text for t in rows) and "2 alert(s)" in text and "NO (lower)" in text


def test_no_gain_beyond_the_interval_is_not_met_and_missing_stages_are_left_out():
    users = np.arange(50)
    flat = np.full(50, 0.5)
    sft = _frame(users, **{"page_ndcg@10": flat, "recall@20": flat, "page_ild@10": flat})
    rows = targets.check({"sft": sft, "ppo": sft.copy()})
    assert [r["target"] for r in rows] == ["ppo page_ndcg@10 >= 1.00x sft", "ppo recall@20 >= 1.00x sft",
                                           "ppo page_ild@10 >= 1.05x sft", "ppo: one of its gains beyond the interval"]
    assert rows[0]["met"] and rows[2]["met"] is False and rows[-1]["met"] is False
    assert targets.check({"ppo": sft}) == []  # no SFT: nothing to compare with
