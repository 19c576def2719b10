"""Both evaluation protocols: which metrics exist, "n/a" with reasons, tail counts, strict JSON."""
import json
import subprocess
import sys

import numpy as np
import pytest

from rlhf_ray import metrics as M
from rlhf_ray.config import DataConfig
from rlhf_ray.data.prepare import prepare
from rlhf_ray.data.prepared import load_prepared
from rlhf_ray.evaluation import pad_lists, protocol_of, score_lists


@pytest.fixture(scope="module")
def temporal_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "temporal"
    prepare(DataConfig(dataset="synthetic", synthetic_users=60, synthetic_items=80, seed=5, split="temporal",
                       tail_fraction=0.8), out, log=lambda s: None)
    return load_prepared(out)


def _oracle_lists(prepared, split="test", width=100):
    """Rankings that put each user's targets first (ordered by rating), then unseen fillers."""
    hist, targets, ratings, _ = prepared.histories(split)
    tops = []
    for h, t, r in zip(hist, targets, ratings):
        first = [i for _, i in sorted(zip(r, t), key=lambda x: -x[0])]
        rest = [i for i in range(prepared.n_items) if i not in set(h) | set(first)]
        tops.append((first + rest)[:width])
    return pad_lists(tops, width=width), targets, ratings


def test_loo_reports_was_and_pwkt_as_na(synth_data):
    prepared = load_prepared(synth_data)
    assert protocol_of(prepared) == "loo"
    top, targets, ratings = _oracle_lists(prepared)
    s = score_lists(top, top[:, :10], targets, ratings, prepared, "loo")
    assert "page_was" in s.na and "leave-one-out" in s.na["page_was"]
    assert "page_pwkt" in s.na and "page_was" not in s.per_user
    assert np.nanmean(s.per_user["ndcg@10"]) == pytest.approx(1.0)  # oracle: target at rank 1
    assert s.scalars["users"] == len(targets) and s.scalars["targets"] == len(targets)


def test_pagellm_protocol_scores_every_target_and_the_page(temporal_data):
    p = temporal_data
    assert protocol_of(p) == "pagellm"
    top, targets, ratings = _oracle_lists(p)
    s = score_lists(top, top[:, :20], targets, ratings, p, "pagellm")
    for k in ("recall@20", "recall@40", "recall@100", "ndcg@100", "page_recall@10", "page_ndcg@20",
              "page_was", "page_pwkt", "page_ild", "page_redundancy", "page_cat_coverage", "tail_page_recall@20"):
        assert k in s.per_user, k
    assert s.scalars["targets"] == sum(len(t) for t in targets) > len(targets)  # several targets per user
    # ILD@10 (the PPO target's cut) judges the page's first 10 slots only; page_ild the whole page
    cats = np.asarray(p.item_categories)
    assert np.allclose(s.per_user["page_ild@10"], M.ild(top[:, :10], item_categories=cats), equal_nan=True)
    assert np.allclose(s.per_user["page_ild"], M.ild(top[:, :20], item_categories=cats), equal_nan=True)
    assert not np.allclose(s.per_user["page_ild@10"], s.per_user["page_ild"], equal_nan=True)
    short_page = score_lists(top, top[:, :10], targets, ratings, p, "pagellm")  # a page of 10: the same figure
    assert np.allclose(short_page.per_user["page_ild@10"], short_page.per_user["page_ild"], equal_nan=True)
    assert s.scalars["tail_targets"] == sum(int(p.is_tail[t].sum()) for t in targets)
    # the oracle page is sorted by true rating: PWKT is 1 wherever defined, WAS is 1 for every user
    assert np.nanmin(s.per_user["page_pwkt"]) == pytest.approx(1.0)
    assert np.nanmean(s.per_user["page_was"]) == pytest.approx(1.0)
    # a reversed page reverses PWKT
    short = [len(t) for t in targets]
    rev = np.array([list(row[:n][::-1]) + list(row[n:20]) for row, n in zip(top, short)])
    r = score_lists(top, rev, targets, ratings, p, "pagellm")
    assert np.nanmax(r.per_user["page_pwkt"]) < 1.0


def test_a_metric_undefined_for_every_user_is_na_not_nan(synth_data):
    prepared = load_prepared(synth_data)
    top, targets, ratings = _oracle_lists(prepared)
    no_tail = np.zeros(prepared.n_items, dtype=bool)
    s = score_lists(top, top[:, :10], targets, ratings, prepared, "loo", is_tail=no_tail)
    assert "tail_recall@10" in s.na and "tail_recall@10" not in s.per_user
    assert s.scalars["tail_users"] == 0


def test_eval_cli_json_is_strict_and_lists_na(tiny_sft, synth_data):
    out = subprocess.run([sys.executable, "-m", "rlhf_ray.cli", "eval", "--checkpoint", str(tiny_sft), "--data",
                          str(synth_data), "--json", "--max-users", "20"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in eval --json output"))
    assert doc["protocol"] == "loo" and "page_pwkt" in doc["n/a"]
    assert isinstance(doc["ndcg@10"], float) and "page_pwkt" not in doc
    # prompts hold the history length the checkpoint was trained with (20 here, not the default 50):
    # the same figures as evaluate_full on 20-item prompts
    from rlhf_ray.checkpoint import generation_for, load_checkpoint
    from rlhf_ray.evaluation import evaluate_full

    ck = load_checkpoint(tiny_sft)
    assert doc["max_history"] == 20 == generation_for(ck.manifest).max_history
    ev = evaluate_full(ck.model.eval(), ck.vocab, load_prepared(synth_data), "test",
                       generation_for(ck.manifest), max_users=20)
    assert doc["ndcg@10"] == pytest.approx(ev.metrics["ndcg@10"]) and doc["recall@20"] == pytest.approx(
        ev.metrics["recall@20"])
    out = subprocess.run([sys.executable, "-m", "rlhf_ray.cli", "eval", "--checkpoint", str(tiny_sft), "--data",
                          str(synth_data), "--json", "--max-users", "20", "--max-history", "7"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and json.loads(out.stdout)["max_history"] == 7, out.stderr[-2000:]
