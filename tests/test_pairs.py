"""Preference-pair synthesis: every family produces what it claims, golden pages are what the
docstring says, and a pair set is reproducible from its seed."""
import numpy as np
import pandas as pd
import pytest

from rlhf_ray import metrics as M
from rlhf_ray.config import ConfigError, PairsConfig
from rlhf_ray.data.pairs import (CoOccurrence, build_pairs, golden_page, load_pairs, pairs_digest, pairs_meta,
                                 save_pairs)
from rlhf_ray.data.prepared import load_prepared
from rlhf_ray.errors import DataError
from rlhf_ray.evaluation import pad_lists

CFG = {"page_size": 5, "max_per_category": 2, "min_page": 3}


@pytest.fixture(scope="module")
def prepared(synth_data):
    return load_prepared(synth_data)


@pytest.fixture(scope="module")
def pairs(prepared):
    return build_pairs(prepared, PairsConfig(**CFG))


def _family(pairs, name):
    rows = pairs[pairs["family"] == name]
    assert len(rows) > 20, f"too few {name} pairs to test: {len(rows)}"
    return rows


@pytest.fixture(scope="module")
def training(prepared):
    """user_idx -> (items, ratings) of the user's training part."""
    s = prepared.sequences
    return {int(u): (np.asarray(i[:vs]), np.asarray(r[:vs]))
            for u, i, r, vs in zip(s["user_idx"], s["items"], s["ratings"], s["valid_start"])}


def test_golden_page_ranks_by_rating_and_caps_categories():
    items = np.array([10, 11, 12, 13, 14, 15])
    ratings = np.array([5, 5, 5, 4, 4, 3.0])
    cats = np.array([0, 0, 0, 1, 1, 2])
    # cap 2: 12 (third of category 0) is skipped, the page fills with the next best
    assert items[golden_page(items, ratings, cats, 4, 2)].tolist() == [10, 11, 13, 14]
    # cap 1: one per category first (10, 13, 15), then the best skipped (11), ordered by rating
    assert items[golden_page(items, ratings, cats, 4, 1)].tolist() == [10, 11, 13, 15]
    # ties in rating: sooner after the cut first
    assert golden_page(items, np.full(6, 5.0), np.arange(6), 3, 1).tolist() == [0, 1, 2]


def test_pairs_come_from_the_training_part_only(pairs, prepared, training):
    cfg = PairsConfig(**CFG)
    assert set(pairs["family"]) == {"relevance", "ranking", "diversity", "redundancy"}
    for row in pairs.itertuples():
        items, ratings = training[row.user_idx]
        assert row.history == items[: row.cut].tolist()
        window = slice(row.cut, row.cut + cfg.window)
        positives = dict(zip(items[window].tolist(), ratings[window].tolist()))
        positives = {i: r for i, r in positives.items() if r > prepared.positive_threshold}
        assert set(row.chosen) <= set(positives) and len(row.chosen) <= cfg.page_size
        assert row.chosen_ratings == [positives[i] for i in row.chosen]
        assert row.chosen_ratings == sorted(row.chosen_ratings, reverse=True)
        assert len(row.rejected) == len(row.chosen) and row.rejected != row.chosen
        assert not set(row.rejected) & set(row.history), "a page never holds a history item"


def test_splits_are_by_user(pairs):
    per_user = pairs.groupby("user_idx")["split"].nunique()
    assert (per_user == 1).all()
    assert set(pairs["split"]) == {"train", "valid", "test"}


def test_relevance_pages_have_fewer_positives(pairs, prepared, training):
    rows = _family(pairs, "relevance")
    thr = prepared.positive_threshold
    for row in rows.itertuples():
        n_pos = sum(r > thr for r in row.rejected_ratings if not np.isnan(r))
        assert n_pos < len(row.chosen)
        items, _ = training[row.user_idx]
        new = set(row.rejected) - set(row.chosen)
        assert new and not new & set(items.tolist()), "negatives are unseen items"
        assert len(set(row.rejected)) == len(row.rejected)


def test_relevance_strength_sets_the_share_replaced(prepared):
    for strength, replaced in ((0.2, 1), (1.0, None)):
        df = build_pairs(prepared, PairsConfig(**CFG, families=["relevance"], strength=strength))
        for row in df.itertuples():
            n = sum(a != b for a, b in zip(row.chosen, row.rejected))
            assert n == (replaced or len(row.chosen))


def test_ranking_pages_keep_the_items_in_a_worse_order(pairs):
    rows = _family(pairs, "ranking")
    for row in rows.itertuples():
        assert sorted(row.rejected) == sorted(row.chosen)
        assert sorted(row.rejected_ratings) == sorted(row.chosen_ratings)
        assert row.rejected_ratings != sorted(row.rejected_ratings, reverse=True)
    w_c = M.pwkt(pad_lists(rows["chosen_ratings"].tolist(), fill=np.nan, dtype=float))
    w_r = M.pwkt(pad_lists(rows["rejected_ratings"].tolist(), fill=np.nan, dtype=float))
    assert (w_r < w_c).all()


def test_diversity_pages_have_lower_category_entropy(pairs, prepared):
    rows = _family(pairs, "diversity")
    cats = prepared.item_categories
    h_c = M.category_entropy(pad_lists(rows["chosen"].tolist()), cats)
    h_r = M.category_entropy(pad_lists(rows["rejected"].tolist()), cats)
    assert (h_r < h_c - 1e-9).all()
    for row in rows.itertuples():  # at most collapse_categories=1 category gains items
        gained = {int(cats[i]) for i in set(row.rejected) - set(row.chosen)}
        assert len(gained) == 1


def test_redundancy_pages_inject_same_category_near_duplicates(pairs, prepared, training):
    rows = _family(pairs, "redundancy")
    cats = prepared.item_categories
    for row in rows.itertuples():
        assert row.rejected[0] == row.chosen[0]
        changed = [k for k in range(len(row.chosen)) if row.rejected[k] != row.chosen[k]]
        assert changed
        items, _ = training[row.user_idx]
        for k in changed:
            above = [cats[i] for j, i in enumerate(row.rejected[:k]) if j not in changed]
            assert cats[row.rejected[k]] in above, "the injected item shares a category with one above it"
            assert row.rejected[k] not in set(items.tolist())
    ild_c = M.ild(pad_lists(rows["chosen"].tolist()), item_categories=cats)
    ild_r = M.ild(pad_lists(rows["rejected"].tolist()), item_categories=cats)
    assert M.mean(ild_r) < M.mean(ild_c)


def test_redundancy_repeats_when_asked(prepared):
    df = build_pairs(prepared, PairsConfig(**CFG, families=["redundancy"], repeat_fraction=1.0))
    assert all(len(set(r)) < len(r) for r in df["rejected"])


def test_co_occurrence_neighbours():
    cooc = CoOccurrence([np.array([0, 1]), np.array([0, 1, 2]), np.array([2, 3])], n_items=5)
    np.testing.assert_allclose(cooc.row(0)[:4], [1.0, 1.0, 0.5, 0.0])  # n_ij / sqrt(n_i n_j)
    assert cooc.nearest(0, np.array([False, True, True, True, True])) == 1
    assert cooc.nearest(0, np.array([False, False, True, True, True])) == 2
    assert cooc.nearest(0, np.zeros(5, dtype=bool)) is None


def test_co_occurrence_nearest_matches_the_dense_scores_and_its_cache_is_bounded():
    rng = np.random.default_rng(0)
    n_items = 60
    users = [rng.choice(n_items, size=int(rng.integers(2, 12)), replace=False) for _ in range(40)]
    cooc = CoOccurrence(users, n_items, cache_rows=3)
    for i in range(n_items):
        allowed = rng.random(n_items) < 0.3
        dense = cooc.row(i) + 1e-9 * cooc.count / max(1, cooc.count.max())  # the similarity + popularity tie-break
        want = int(np.argmax(np.where(allowed, dense, -1.0))) if allowed.any() else None
        assert cooc.nearest(i, allowed) == want
        assert len(cooc._rows) <= 3


def test_same_seed_same_pairs_and_file_round_trip(prepared, pairs, tmp_path):
    cfg = PairsConfig(**CFG)
    assert pairs_digest(build_pairs(prepared, cfg)) == pairs_digest(pairs)
    assert pairs_digest(build_pairs(prepared, PairsConfig(**CFG, seed=1))) != pairs_digest(pairs)
    meta = pairs_meta(pairs, prepared, cfg)
    save_pairs(pairs, tmp_path / "p.parquet", meta)
    back, meta2 = load_pairs(tmp_path / "p.parquet")
    assert meta2 == meta and meta2["seed"] == 0 and meta2["config"] == cfg.to_dict()
    assert pairs_digest(back) == meta["digest"]
    pd.testing.assert_frame_equal(back, pairs)


def test_cli_writes_pairs(synth_data, tmp_path, capsys):
    from rlhf_ray.cli import main

    out = tmp_path / "pairs.parquet"
    assert main(["pairs", "--data", str(synth_data), "--out", str(out), "--page-size", "5", "--min-page", "3",
                 "--families", "ranking,diversity", "--strength", "1.0", "--json"]) == 0
    df, meta = load_pairs(out)
    assert set(df["family"]) == {"ranking", "diversity"} and meta["config"]["strength"] == 1.0
    assert '"pairs"' in capsys.readouterr().out


def test_bad_inputs_are_user_errors(synth_data, tmp_path):
    with pytest.raises(ConfigError, match="families"):
        PairsConfig(families=["relevance", "novelty"])
    with pytest.raises(ConfigError, match="min_page"):
        PairsConfig(page_size=5, min_page=6)
    with pytest.raises(DataError, match="not found"):
        load_pairs(tmp_path / "missing.parquet")
    with pytest.raises(DataError, match="not a rlhf-ray pair file"):
        load_pairs(synth_data / "items.parquet")
    with pytest.raises(DataError, match="no preference pairs"):
        build_pairs(load_prepared(synth_data), PairsConfig(page_size=100, min_page=100))
