"""On-policy hard negatives: the policy's own pages become rejected pages where they miss
the user's window positives, and the reward stage trains and validates on them."""
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_MODEL
from rlhf_ray.checkpoint import load_checkpoint
from rlhf_ray.config import PairsConfig, RewardConfig
from rlhf_ray.data.pairs import build_pairs, load_pairs
from rlhf_ray.errors import CheckpointError
from rlhf_ray.policy_pairs import POLICY_FAMILY, UserTimelines, add_policy_pairs
from rlhf_ray.stages import reward_model as stage
from rlhf_ray.stages.common import open_data

PAIRS = {"page_size": 5, "max_per_category": 2, "min_page": 3, "cuts_per_user": 2}


def _with_policy(synth_data, tiny_sft, n_pages=2):
    prepared = open_data(synth_data)
    base = build_pairs(prepared, PairsConfig.from_dict(PAIRS))
    ck = load_checkpoint(tiny_sft)
    out = add_policy_pairs(base, prepared, ck.model, ck.vocab, window=PairsConfig().window, max_history=20,
                           n_pages=n_pages, temperature=1.0, seed=0, log=lambda m: None)
    return prepared, base, out


def test_policy_pages_are_rejected_only_where_they_miss_positives(synth_data, tiny_sft):
    prepared, base, out = _with_policy(synth_data, tiny_sft)
    pol = out[out["family"] == POLICY_FAMILY]
    assert len(pol) > 0
    # the synthetic rows are untouched, in the same order among themselves
    rest = out[out["family"] != POLICY_FAMILY].reset_index(drop=True)
    assert rest[["user_idx", "cut", "family"]].equals(base[["user_idx", "cut", "family"]])
    assert [list(x) for x in rest["rejected"]] == [list(x) for x in base["rejected"]]
    tl = UserTimelines(prepared)
    split_of = dict(zip(base["user_idx"], base["split"]))
    for r in pol.itertuples(index=False):
        chosen, rejected = list(r.chosen), list(r.rejected)
        assert len(rejected) == len(chosen) and len(set(rejected)) == len(rejected)
        assert not set(rejected) & set(r.history)  # seen items blocked, as in evaluation
        pos = tl.positives(int(r.user_idx), int(r.cut), PairsConfig().window)
        assert set(chosen) <= pos
        assert sum(x in pos for x in rejected) < len(chosen)
        assert r.split == split_of[r.user_idx]
        rated = tl.after(int(r.user_idx), int(r.cut))
        for x, y in zip(rejected, r.rejected_ratings):
            assert (np.isnan(y) and x not in rated) or y == rated[x]
    # at most n_pages distinct pages per golden page
    per_cut = pol.groupby(["user_idx", "cut"]).size()
    assert per_cut.max() <= 2
    assert all(len({tuple(p) for p in g["rejected"]}) == len(g) for _, g in pol.groupby(["user_idx", "cut"]))


def test_policy_pairs_are_deterministic_and_kept_when_present(synth_data, tiny_sft):
    _, _, a = _with_policy(synth_data, tiny_sft)
    prepared, _, b = _with_policy(synth_data, tiny_sft)
    assert [list(x) for x in a["rejected"]] == [list(x) for x in b["rejected"]]
    ck = load_checkpoint(tiny_sft)
    again = add_policy_pairs(a, prepared, ck.model, ck.vocab, window=30, max_history=20, n_pages=3,
                             temperature=1.0, seed=1, log=lambda m: None)
    assert again is a  # a set that has them keeps its own


def test_reward_stage_trains_and_validates_on_policy_pairs(synth_data, tiny_sft, tmp_path):
    train = {"epochs": 1, "max_steps": 4, "batch_size": 16, "progress": False, "tensorboard": False}
    cfg = RewardConfig.from_dict({"max_history": 20, "train": train, "pairs": PAIRS, "policy_pages": 2})
    out = tmp_path / "reward"
    metrics = stage.run(cfg, str(synth_data), str(out), str(tiny_sft))
    assert 0.0 <= metrics["val/acc_policy"] <= 1.0
    pairs, meta = load_pairs(str(out) + ".pairs.parquet")
    assert (pairs["family"] == POLICY_FAMILY).sum() == meta["by_family"][POLICY_FAMILY] > 0
    parent = json.loads((Path(tiny_sft) / "manifest.json").read_text())
    assert meta["policy"] == {"checkpoint": f"sft:{parent['id']}", "pages": 2, "temperature": 1.0}
    # the recorded pair set (policy rows included) is what evaluation finds again
    manifest = json.loads((out / "manifest.json").read_text())
    again = stage.pairs_for_checkpoint(manifest, open_data(synth_data))
    assert len(again) == len(pairs)


def test_fresh_backbone_and_off_switch_add_no_policy_pairs(synth_data, tiny_sft):
    prepared = open_data(synth_data)
    ck = load_checkpoint(tiny_sft)
    off = RewardConfig.from_dict({"max_history": 20, "pairs": PAIRS, "policy_pages": 0})
    assert stage.negative_policy(off, ck.model, ck.vocab, ck.manifest) == (None, None)
    on = RewardConfig.from_dict({"max_history": 20, "pairs": PAIRS, "model": TINY_MODEL})
    assert stage.negative_policy(on, ck.model, ck.vocab, None) == (None, None)
    df, _ = stage.pairs_for_training(off, prepared, ck.model, ck.vocab)
    assert POLICY_FAMILY not in set(df["family"])


def test_a_missing_policy_checkpoint_is_a_clear_error(tiny_sft, tmp_path):
    ck = load_checkpoint(tiny_sft)
    cfg = RewardConfig.from_dict({"max_history": 20, "policy_checkpoint": str(tmp_path / "nope")})
    with pytest.raises(CheckpointError, match="nope"):
        stage.negative_policy(cfg, ck.model, ck.vocab, ck.manifest)


def test_page_ndcg_and_spearman_by_hand():
    from rlhf_ray.reward_calibration import page_ndcg, spearman

    assert page_ndcg([1, 2, 3], {1, 2, 3}, 3) == pytest.approx(1.0)
    assert page_ndcg([9, 1, 8], {1, 2}, 3) == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert page_ndcg([9, 8], set(), 2) == 0.0
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.array([1.0, 2.0]), np.array([5.0, 5.0])))


def test_calibration_of_a_trained_reward_on_held_out_prompts(synth_data, tiny_sft, tmp_path):
    from rlhf_ray.rewards import ModelReward
    from rlhf_ray.reward_calibration import calibration

    train = {"epochs": 1, "max_steps": 4, "batch_size": 16, "progress": False, "tensorboard": False}
    cfg = RewardConfig.from_dict({"max_history": 20, "train": train, "pairs": {**PAIRS, "valid_users": 0.2,
                                                                              "test_users": 0.3}})
    out = tmp_path / "reward"
    stage.run(cfg, str(synth_data), str(out), str(tiny_sft))
    pairs, _ = load_pairs(str(out) + ".pairs.parquet")
    held = pairs[pairs["split"] == "test"]
    ck = load_checkpoint(tiny_sft)
    res = calibration(ModelReward.from_checkpoint(out), ck.model, ck.vocab, open_data(synth_data), held,
                      window=cfg.pairs.window, max_history=20, n_samples=3, max_prompts=20)
    sp = res["spearman"]
    assert 0 < sp["prompts"] <= 20 and 0 < sp["users"] <= held["user_idx"].nunique()
    assert -1.0 <= sp["lo"] <= sp["mean"] <= sp["hi"] <= 1.0
    assert sp["pages_per_prompt"] > 3  # golden + rejected + sampled
    assert res["golden_beats_greedy"]["prompts"] <= 20


def test_graded_pairs_order_policy_pages_by_hits(synth_data, tiny_sft):
    from rlhf_ray.policy_pairs import GRADED_FAMILY, golden_rows, graded_pairs

    rng = np.random.default_rng(0)
    pages = [[1, 2, 3], [1, 9, 8], [7, 8, 9], [2, 1, 9]]
    pairs = graded_pairs(pages, {1, 2, 3}, 10, rng)
    # every ordered pair with strictly more hits, and nothing else (hits 3, 1, 0, 2)
    assert sorted(map(str, pairs)) == sorted(map(str, [(pages[0], pages[1]), (pages[0], pages[2]),
                                                       (pages[0], pages[3]), (pages[1], pages[2]),
                                                       (pages[3], pages[1]), (pages[3], pages[2])]))
    assert len(graded_pairs(pages, {1, 2, 3}, 2, rng)) == 2
    assert graded_pairs(pages, {1, 2, 3}, 0, rng) == [] and graded_pairs(pages[2:3], {9}, 5, rng) == []

    prepared = open_data(synth_data)
    base = build_pairs(prepared, PairsConfig.from_dict(PAIRS))
    ck = load_checkpoint(tiny_sft)
    kw = dict(window=PairsConfig().window, max_history=20, n_pages=4, temperature=1.0, seed=0, log=lambda m: None)
    plain = add_policy_pairs(base, prepared, ck.model, ck.vocab, **kw)
    out = add_policy_pairs(base, prepared, ck.model, ck.vocab, graded=3, **kw)
    # the graded rows come on top of exactly the rows the plain run writes
    assert out[out["family"] != GRADED_FAMILY].reset_index(drop=True)[["user_idx", "cut", "family"]].equals(
        plain[["user_idx", "cut", "family"]])
    gr = out[out["family"] == GRADED_FAMILY]
    assert len(gr) > 0 and gr.groupby(["user_idx", "cut"]).size().max() <= 3
    tl = UserTimelines(prepared)
    for r in gr.itertuples(index=False):
        pos = tl.positives(int(r.user_idx), int(r.cut), PairsConfig().window)
        assert sum(x in pos for x in r.chosen) > sum(x in pos for x in r.rejected)
        assert not (set(r.chosen) | set(r.rejected)) & set(r.history)
    # the golden page of each cut is still found (graded rows' chosen pages are the policy's)
    g = golden_rows(out)
    assert len(g) == len(base.drop_duplicates(["user_idx", "cut"]))
    assert all(r.family != GRADED_FAMILY for r in g.itertuples())


def test_graded_pairs_need_two_policy_pages():
    from rlhf_ray.config.base import ConfigError

    with pytest.raises(ConfigError, match="policy_graded"):
        RewardConfig.from_dict({"policy_pages": 1, "policy_graded": 2})
