"""Mixed-grained reward model: the scoring pass, the Bradley-Terry loss path, learning,
the checkpoint round trip, alpha, the rule-based reward and the CLI."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import TINY_MODEL
from rlhf_ray.config import ConfigError, DataConfig, RewardConfig
from rlhf_ray.data.pairs import load_pairs
from rlhf_ray.errors import CheckpointError
from rlhf_ray.evaluation import pad_lists
from rlhf_ray.generation import build_prompts
from rlhf_ray.model import Heads
from rlhf_ray.rewards import (HEAD_NAMES, ModelReward, RewardFn, RewardNorm, RuleReward, item_mean, score_pages)
from rlhf_ray.stages import reward_model as stage

PAIRS = {"page_size": 5, "max_per_category": 2, "min_page": 3}


def reward_config(**over) -> RewardConfig:
    train = {"epochs": 1, "batch_size": 32, "lr": 2e-3, "patience": 0, "progress": False, "tensorboard": False}
    return RewardConfig.from_dict({"model": TINY_MODEL, "max_history": 20, "norm_pairs": 256,
                                   "train": {**train, **over.pop("train", {})},
                                   "pairs": {**PAIRS, **over.pop("pairs", {})}, **over})


@pytest.fixture(scope="module")
def rm_data(tmp_path_factory) -> Path:
    """More users than ``synth_data``, so held-out users' pairs measure generalisation."""
    from rlhf_ray.data.prepare import prepare

    out = tmp_path_factory.mktemp("rm") / "data"
    prepare(DataConfig(dataset="synthetic", synthetic_users=300, synthetic_items=120, seed=3), out, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def trained(rm_data, tmp_path_factory):
    """One epoch (~90 steps) of reward training from a fresh tiny backbone (the SFT start is
    covered by the CLI test); with one validation the export is the last state."""
    import copy

    from rlhf_ray.stages.common import init_policy, open_data
    from rlhf_ray.stages.loop import fit

    cfg = reward_config(pairs={"strength": 1.0, "negatives": "random"})
    out = tmp_path_factory.mktemp("rm") / "reward"
    prepared = open_data(rm_data)
    lm, tok, vocab, catalog, parent = init_policy(None, cfg.model, prepared)
    spec = stage.build_spec(cfg, prepared, lm, tok, vocab, catalog, out, parent)
    before = copy.deepcopy(spec.module).eval()
    metrics = fit(spec, cfg.train, out.parent / "logs")
    pairs, meta = load_pairs(str(out) + ".pairs.parquet")
    return SimpleNamespace(out=out, module=spec.module.eval(), before=before, metrics=metrics, cfg=cfg, pairs=pairs,
                           meta=meta, vocab=vocab)


def _scorer(sft_dir):
    """An SFT backbone with fresh (seeded) reward heads, in eval mode."""
    from rlhf_ray.checkpoint import load_checkpoint

    ck = load_checkpoint(sft_dir)
    torch.manual_seed(0)
    return ck.model.eval(), Heads(ck.model.config.n_embd, HEAD_NAMES).eval(), ck.vocab


# --------------------------------------------------------------------------- loss and scoring


def test_pair_loss_matches_hand_computed_values():
    loss, stats = stage.pair_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]),
                                  torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0]), page_weight=1.0, item_weight=0.5)
    l_page = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    l_item = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2
    assert float(loss) == pytest.approx(l_page + 0.5 * l_item, abs=1e-6)
    assert stats["acc_page"] == 0.5 and stats["acc_item"] == 0.5
    assert stats["l_page"] == pytest.approx(l_page, abs=1e-6)


def test_scores_ignore_batching_and_padding(tiny_sft):
    lm, heads, vocab = _scorer(tiny_sft)
    hist = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]]
    pages = torch.tensor([[20, 21, 22, 23], [24, 25, -1, -1], [26, 27, 28, -1]])
    with torch.no_grad():
        page, items, mask = score_pages(lm, heads, vocab, build_prompts(hist, vocab, 20, exclude_seen=False), pages)
        for b in range(3):
            k = int(mask[b].sum())
            p1, i1, _ = score_pages(lm, heads, vocab, build_prompts(hist[b:b + 1], vocab, 20, exclude_seen=False),
                                    pages[b:b + 1, :k])
            assert float(p1[0]) == pytest.approx(float(page[b]), abs=1e-5)
            torch.testing.assert_close(i1[0], items[b, :k], atol=1e-5, rtol=0)
    assert (items[~mask] == 0).all()


def test_item_rewards_are_causal_and_read_their_own_item(tiny_sft):
    lm, heads, vocab = _scorer(tiny_sft)
    prompts = build_prompts([[1, 2, 3]] * 2, vocab, 20, exclude_seen=False)
    with torch.no_grad():
        page, items, _ = score_pages(lm, heads, vocab, prompts, torch.tensor([[20, 21, 22, 23], [20, 21, 40, 23]]))
    torch.testing.assert_close(items[0, :2], items[1, :2])  # slots before the change: same context
    assert abs(float(items[0, 2] - items[1, 2])) > 1e-6  # r_t reads the item at t
    assert abs(float(page[0] - page[1])) > 1e-6


def test_stage_loss_path_is_bradley_terry_on_both_heads(trained):
    m = trained.before  # the module before training
    lm, heads, vocab = m.lm, m.heads, trained.vocab
    cfg = reward_config(page_weight=1.0, item_weight=0.5)
    rows = trained.pairs.iloc[::97].iloc[:6]  # a few users and families
    module = stage.RewardModule(lm, heads, vocab, cfg).eval()
    with torch.no_grad():
        loss, stats = module(stage.pair_batch(rows, vocab, cfg.max_history))
    by_hand = {}
    for col in ("chosen", "rejected"):  # each page scored alone
        scores = []
        for r in rows.itertuples():
            with torch.no_grad():
                p, i, m = score_pages(lm, heads, vocab, build_prompts([r.history], vocab, 20, exclude_seen=False),
                                      torch.tensor([getattr(r, col)]))
            scores.append((float(p[0]), float(item_mean(i, m)[0])))
        by_hand[col] = np.array(scores)
    bt = lambda c, r: float(np.mean(np.log1p(np.exp(-(c - r)))))  # noqa: E731  -log sigma(c - r)
    expected = bt(by_hand["chosen"][:, 0], by_hand["rejected"][:, 0]) + \
        0.5 * bt(by_hand["chosen"][:, 1], by_hand["rejected"][:, 1])
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert stats["l_page"] == pytest.approx(bt(by_hand["chosen"][:, 0], by_hand["rejected"][:, 0]), abs=1e-5)


# --------------------------------------------------------------------------- learning and the checkpoint


def test_reward_model_separates_held_out_pairs(trained):
    """Pairs of users the model never trained on: overall accuracy beats chance with a 95%
    confidence margin, every family beats chance, and training is what does it."""
    test_pairs = trained.pairs[trained.pairs["split"] == "test"]
    train_users = set(trained.pairs.loc[trained.pairs["split"] == "train", "user_idx"])
    assert len(test_pairs) > 300 and not set(test_pairs["user_idx"]) & train_users  # held-out users
    reward = ModelReward.from_checkpoint(trained.out)
    table = stage.evaluate_pairs(reward, test_pairs)
    m = trained.before
    untrained = stage.evaluate_pairs(ModelReward(m.lm, m.heads, trained.vocab, max_history=20), test_pairs)
    acc, n = table["overall"]["mix"], table["overall"]["n"]
    assert n == len(test_pairs)
    lower = acc - 1.96 * math.sqrt(acc * (1 - acc) / n)  # normal-approximation 95% lower bound
    assert lower > 0.58, table
    assert acc > untrained["overall"]["mix"] + 0.08, (table, untrained)
    assert set(table) == {"overall", "relevance", "ranking", "diversity", "redundancy"}, table
    for family in ("relevance", "ranking", "diversity", "redundancy"):
        assert table[family]["n"] >= 50 and table[family]["mix"] > 0.55, (family, table)
    assert table["relevance"]["mix"] > 0.72, table
    assert trained.metrics["train/steps"] >= 50


def test_checkpoint_round_trip_gives_the_same_scores(trained):
    reward = ModelReward.from_checkpoint(trained.out)
    man = reward.manifest
    assert man["stage"] == "reward" and man["heads"]["names"] == HEAD_NAMES
    assert man["reward"]["alpha"] == trained.cfg.alpha and man["pairs"]["digest"] == trained.meta["digest"]
    norm = RewardNorm.from_dict(man["reward"]["norm"])
    assert norm.page_mean == pytest.approx(trained.metrics["norm/page_mean"])
    m = trained.module
    live = ModelReward(m.lm, m.heads, trained.vocab, alpha=trained.cfg.alpha, norm=norm, max_history=20)
    rows = trained.pairs.iloc[:40]
    pages = torch.as_tensor(pad_lists(rows["chosen"].tolist()))
    a = reward(rows["history"].tolist(), pages, rows["user_idx"].tolist())
    b = live(rows["history"].tolist(), pages, rows["user_idx"].tolist())
    for x, y in ((a.page, b.page), (a.items, b.items), (a.total, b.total)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    raw = ModelReward(m.lm, m.heads, trained.vocab, max_history=20)(rows["history"].tolist(), pages)
    torch.testing.assert_close(a.page, (raw.page - norm.page_mean) / norm.page_std, atol=1e-5, rtol=1e-5)


def test_alpha_selects_the_heads(trained):
    rows = trained.pairs.iloc[:30]
    hist = rows["history"].tolist()
    pages = torch.as_tensor(pad_lists(rows["rejected"].tolist()))
    mask = pages >= 0
    r1 = ModelReward.from_checkpoint(trained.out, alpha=1.0)(hist, pages)
    r0 = ModelReward.from_checkpoint(trained.out, alpha=0.0)(hist, pages)
    rh = ModelReward.from_checkpoint(trained.out, alpha=0.25)(hist, pages)
    torch.testing.assert_close(r1.total, r1.page)
    torch.testing.assert_close(r0.total, item_mean(r0.items, mask))
    torch.testing.assert_close(rh.total, 0.25 * r1.page + 0.75 * item_mean(r0.items, mask), atol=1e-5, rtol=1e-5)
    assert isinstance(r1.total, torch.Tensor) and r1.items.shape == pages.shape


# --------------------------------------------------------------------------- rules, protocol, CLI


def _training_cut(prepared):
    """(user, history = a prefix of the training range, a later training positive not in it)."""
    s = prepared.sequences
    thr = prepared.positive_threshold
    for u, items, ratings, vs in zip(s["user_idx"], s["items"], s["ratings"], s["valid_start"]):
        items, ratings = np.asarray(items[:vs]).tolist(), np.asarray(ratings[:vs])
        t = len(items) // 2
        later = [i for i, r in zip(items[t:], ratings[t:]) if r > thr and i not in items[:t]]
        if t >= 3 and later:
            return int(u), items[:t], later[0]
    raise AssertionError("no user with a training positive after the middle of the training range")


def test_rule_reward_counts_hits_tail_diversity_and_repeats(rm_data):
    from rlhf_ray.data.prepared import load_prepared

    prepared = load_prepared(rm_data)
    u, hist, target = _training_cut(prepared)  # hit: a training positive after the history
    tail = int(np.flatnonzero(prepared.is_tail & ~np.isin(np.arange(prepared.n_items), hist + [target]))[0])
    rule = RuleReward(prepared, hit=1.0, tail=0.1, diversity=0.5, repeat=1.0)
    out = rule([hist], torch.tensor([[target, tail, hist[0], target, -1]]), user_idx=[u])
    tail_bonus = 0.1 * prepared.is_tail[[target, tail, hist[0], target]].astype(float)
    expected_items = np.array([1.0, 0.0, -1.0, -1.0, 0.0]) + np.append(tail_bonus, 0.0)
    np.testing.assert_allclose(out.items[0].numpy(), expected_items, atol=1e-6)
    cats = prepared.item_categories[[target, tail, hist[0], target]]
    p = np.unique(cats, return_counts=True)[1] / 4
    assert float(out.page[0]) == pytest.approx(0.5 * float(-(p * np.log(p)).sum()) / math.log(4), abs=1e-5)
    assert float(out.total[0]) == pytest.approx(float(out.page[0]) + expected_items.sum(), abs=1e-5)
    with pytest.raises(ValueError, match="user_idx"):
        rule([hist], torch.tensor([[target]]))


def test_rule_reward_never_pays_for_validation_or_test_targets(rm_data):
    """PPO prompts with the training range and validates on ``valid``: by default the rule pays
    no hit for a held-out target, only for training-range positives the history lacks."""
    from rlhf_ray.data.prepared import load_prepared

    prepared = load_prepared(rm_data)
    hits_only = {"hit": 1.0, "tail": 0.0, "diversity": 0.0, "repeat": 0.0}
    rule = RuleReward(prepared, **hits_only)  # the default, as actors.reward_actor.build_reward("rule") builds it
    train_pos = RuleReward(prepared, split="train", **hits_only).targets
    for split in ("valid", "test"):
        h = prepared.histories(split)
        held_out = [[t for t in tg if t not in train_pos[int(u)]] for u, tg in zip(h.user_idx, h.targets)]
        rows = [b for b, t in enumerate(held_out) if t]
        assert len(rows) > 100
        pages = torch.as_tensor(pad_lists([held_out[b][:5] for b in rows]))
        users = h.user_idx[rows].tolist()
        ppo_hist = prepared.histories("train")  # PPO's prompts: the whole training range
        by_user = dict(zip(ppo_hist.user_idx.tolist(), ppo_hist.histories))
        out = rule([by_user.get(u, []) for u in users], pages, user_idx=users)
        assert float(out.total.abs().max()) == 0.0, split  # not one held-out target rewarded
        # the same pages under the split's own targets are all hits: the check above is not vacuous
        peek = RuleReward(prepared, split=split, **hits_only)([by_user.get(u, []) for u in users], pages, users)
        assert torch.equal(peek.total, (pages >= 0).sum(-1).float())
    u, hist, target = _training_cut(prepared)
    assert float(rule([hist], torch.tensor([[target]]), user_idx=[u]).total[0]) == 1.0
    full = by_user[u]  # with the whole training range as history the same item is seen: no hit
    assert target in full and float(rule([full], torch.tensor([[target]]), user_idx=[u]).total[0]) == 0.0
    with pytest.raises(ValueError, match="split"):
        RuleReward(prepared, split="all")


def test_rewards_satisfy_the_protocol(trained, rm_data):
    from rlhf_ray.data.prepared import load_prepared

    assert isinstance(ModelReward.from_checkpoint(trained.out), RewardFn)
    assert isinstance(RuleReward(load_prepared(rm_data)), RewardFn)


def _last_json(stdout: str) -> dict:
    """The JSON document a --json command prints last (training logs may precede it)."""
    start = stdout.rfind("\n{") + 1
    return json.loads(stdout[start:])


def test_cli_trains_and_evaluates_a_reward_model(synth_data, tiny_sft, trained, tmp_path, capsys):
    from rlhf_ray.cli import main

    pairs_file, out = tmp_path / "pairs.parquet", tmp_path / "reward"
    assert main(["pairs", "--data", str(synth_data), "--out", str(pairs_file), "--page-size", "5",
                 "--min-page", "3"]) == 0
    args = ["reward", "--sft", str(tiny_sft), "--data", str(synth_data), "--out", str(out), "--max-history", "20",
            "--train.max-steps", "3", "--train.batch-size", "8", "--no-train.progress", "--no-train.tensorboard",
            "--norm-pairs", "16", "--alpha", "0.3", "--policy-pages", "0", "--json"]
    capsys.readouterr()
    assert main(args + ["--pairs-file", str(pairs_file)]) == 0
    assert _last_json(capsys.readouterr().out)["checkpoint"] == str(out.resolve())
    assert ModelReward.from_checkpoint(out).manifest["parent"]["stage"] == "sft"
    assert main(["eval-reward", "--reward", str(out), "--data", str(synth_data), "--json"]) == 0
    first = _last_json(capsys.readouterr().out)
    assert first["alpha"] == 0.3 and set(first["accuracy"]) >= {"overall", "relevance", "ranking"}
    # the CLI reports the accuracy of this checkpoint on the test users' pairs, nothing else
    test_pairs = load_pairs(str(pairs_file))[0].query("split == 'test'")
    assert first["accuracy"]["overall"]["n"] == len(test_pairs) > 0
    assert first["accuracy"] == stage.evaluate_pairs(ModelReward.from_checkpoint(out), test_pairs)
    pairs_file.unlink()  # synthesised again from the config recorded in the manifest
    assert main(["eval-reward", "--reward", str(out), "--data", str(synth_data), "--json"]) == 0
    assert _last_json(capsys.readouterr().out)["accuracy"] == first["accuracy"]
    # with on-policy pages the file's pairs plus the policy's make a new set, written beside the checkpoint
    with_policy = tmp_path / "reward-policy"
    assert main(["pairs", "--data", str(synth_data), "--out", str(pairs_file), "--page-size", "5",
                 "--min-page", "3"]) == 0
    policy_args = [a if a != str(out) else str(with_policy) for a in args]
    assert main(policy_args[:-3] + ["--policy-pages", "1", "--json", "--pairs-file", str(pairs_file)]) == 0
    capsys.readouterr()
    saved, meta = load_pairs(str(with_policy) + ".pairs.parquet")
    assert meta["derived_from"] == str(pairs_file) and (saved["family"] == "policy").any()
    assert len(saved) > len(load_pairs(str(pairs_file))[0])
    assert main(["eval-reward", "--reward", str(with_policy), "--data", str(synth_data), "--json"]) == 0
    assert "policy" in _last_json(capsys.readouterr().out)["accuracy"]
    other = str(trained.out) + ".pairs.parquet"  # pairs of another data set
    assert main(args + ["--pairs-file", other]) == 2
    assert "other data" in capsys.readouterr().err
    assert main(args + ["--max-history", "200"]) == 2  # prompt + page longer than the model's positions
    assert "max_history" in capsys.readouterr().err


def test_user_errors(tiny_sft, trained):
    with pytest.raises(CheckpointError, match="not a reward model"):
        ModelReward.from_checkpoint(tiny_sft)
    reward = ModelReward.from_checkpoint(trained.out)
    with pytest.raises(ValueError, match="item_idx must be in"):
        reward([[1, 2]], torch.tensor([[3, trained.vocab.n_items]]))
    with pytest.raises(ValueError, match="rows"):
        reward([[1, 2]], torch.tensor([[3], [4]]))
    with pytest.raises(ConfigError, match="alpha"):
        reward_config(alpha=1.5)


def test_ensemble_is_the_member_mean_and_refuses_mismatched_members(trained):
    from rlhf_ray.rewards import EnsembleReward

    a = ModelReward.from_checkpoint(trained.out)
    m = trained.before  # the untrained start: another member, with the trained one's normalisation
    b = ModelReward(m.lm, m.heads, trained.vocab, alpha=a.alpha, norm=a.norm, max_history=20)
    ens = EnsembleReward([a, b])
    assert isinstance(ens, RewardFn) and ens.alpha == a.alpha
    rows = trained.pairs.iloc[:24]
    hist, users = rows["history"].tolist(), rows["user_idx"].tolist()
    pages = torch.as_tensor(pad_lists(rows["rejected"].tolist()))
    out, oa, ob = ens(hist, pages, users), a(hist, pages, users), b(hist, pages, users)
    assert not torch.allclose(oa.total, ob.total)  # two different members
    for x, y, z in ((out.page, oa.page, ob.page), (out.items, oa.items, ob.items), (out.total, oa.total, ob.total)):
        torch.testing.assert_close(x, (y + z) / 2)
    one = EnsembleReward.from_checkpoints([trained.out])
    torch.testing.assert_close(one(hist, pages, users).total, oa.total)
    with pytest.raises(ValueError, match="alpha"):
        EnsembleReward([a, ModelReward(m.lm, m.heads, trained.vocab, alpha=0.1, norm=a.norm, max_history=20)])
    with pytest.raises(ValueError, match="at least one"):
        EnsembleReward([])


def test_uncertainty_penalty_subtracts_the_members_spread(trained):
    """mean - u * std (population) per page and per slot, the total mixed from those; u = 0 is the mean."""
    from rlhf_ray.rewards import EnsembleReward, mix

    a = ModelReward.from_checkpoint(trained.out)
    m = trained.before
    b = ModelReward(m.lm, m.heads, trained.vocab, alpha=a.alpha, norm=a.norm, max_history=20)
    rows = trained.pairs.iloc[:24]
    hist, users = rows["history"].tolist(), rows["user_idx"].tolist()
    pages = torch.as_tensor(pad_lists(rows["rejected"].tolist()))
    mask = pages >= 0
    oa, ob = a(hist, pages, users), b(hist, pages, users)
    out = EnsembleReward([a, b], uncertainty=1.0)(hist, pages, users)
    for got, x, y in ((out.page, oa.page, ob.page), (out.items, oa.items, ob.items)):
        # two members: population std = |x - y| / 2, so mean - 1 std = min(x, y)
        torch.testing.assert_close(got, torch.minimum(x, y))
    torch.testing.assert_close(out.total, mix(out.page, out.items, mask, a.alpha))
    assert (out.items[~mask] == 0).all()
    plain = EnsembleReward([a, b])(hist, pages, users)
    assert (out.total < plain.total - 1e-6).any() and (out.total <= plain.total + 1e-6).all()
    with pytest.raises(ValueError, match="at least two members"):
        EnsembleReward([a], uncertainty=1.0)
    with pytest.raises(ValueError, match="uncertainty"):
        EnsembleReward([a, b], uncertainty=-1.0)


def test_clip_bounds_the_normalised_scores_and_keeps_the_mix(trained):
    from rlhf_ray.rewards import mix

    rows = trained.pairs.iloc[:48]
    hist, users = rows["history"].tolist(), rows["user_idx"].tolist()
    pages = torch.as_tensor(pad_lists(rows["rejected"].tolist()))
    mask = pages >= 0
    unclipped = ModelReward.from_checkpoint(trained.out)
    free = unclipped(hist, pages, users)
    c = 0.5 * float(torch.cat([free.page.abs(), free.items[mask].abs()]).max())  # some scores lie beyond it
    out = ModelReward.from_checkpoint(trained.out, clip=c)(hist, pages, users)
    torch.testing.assert_close(out.page, free.page.clamp(-c, c))
    torch.testing.assert_close(out.items, free.items.clamp(-c, c) * mask)
    torch.testing.assert_close(out.total, mix(out.page, out.items, mask, unclipped.alpha))
    assert not torch.allclose(out.total, free.total)
    with pytest.raises(ValueError, match="clip"):
        ModelReward.from_checkpoint(trained.out, clip=-1.0)


def test_ppo_reward_builds_the_ensemble_from_members(trained, rm_data):
    """actors.reward_actor.build_reward: members -> EnsembleReward (clip and penalty passed on), under the
    grounded terms; uncertainty without members is a config error naming the field."""
    from actors.reward_actor import build_reward
    from rlhf_ray.config import PPORewardConfig
    from rlhf_ray.rewards import EnsembleReward, HitBonus

    cfg = PPORewardConfig(members=[str(trained.out)], uncertainty_coef=1.0, clip=2.0, hit_weight=1.0)
    fn = build_reward(str(trained.out), cfg, str(rm_data))
    assert isinstance(fn, HitBonus) and isinstance(fn.base, EnsembleReward)
    assert fn.base.uncertainty == 1.0 and [m.clip for m in fn.base.members] == [2.0, 2.0]
    single = build_reward(str(trained.out), PPORewardConfig(clip=2.0), str(rm_data))
    assert isinstance(single, ModelReward) and single.clip == 2.0
    with pytest.raises(ConfigError, match="uncertainty_coef"):
        PPORewardConfig(uncertainty_coef=1.0)
    with pytest.raises(ConfigError, match="clip"):
        PPORewardConfig(clip=-0.5)


def test_ppo_reward_model_weight_scales_the_model_and_keeps_the_grounded_terms(trained, rm_data):
    """ppo.reward.model_weight: 0 leaves hits and category entropy alone (the ablation), 0.5 halves the model's
    part of every page and slot; the parts still add up to the total; a reward with nothing left is refused."""
    from actors.reward_actor import build_reward, reward_mix
    from rlhf_ray.config import PPORewardConfig
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.rewards import HitBonus

    prepared = load_prepared(rm_data)
    s, thr = prepared.sequences, prepared.positive_threshold
    hist, users, rows = [], [], []
    for u, items, ratings, vs in zip(s["user_idx"], s["items"], s["ratings"], s["valid_start"]):
        items, ratings = np.asarray(items[:vs]), np.asarray(ratings[:vs])
        held = [int(i) for i, r in zip(items[-3:], ratings[-3:]) if r > thr and i not in items[:-3]]
        if len(items) > 8 and held:  # the prompt holds out the last 3 training items, as ppo.holdout does
            hist.append(items[:-3].tolist())
            users.append(int(u))
            rows.append((held + [(int(u) * 7 + j * 3) % prepared.n_items for j in range(5)])[:5])
        if len(rows) == 6:
            break
    pages = torch.as_tensor(rows)
    terms = dict(hit_weight=2.0, diversity_weight=3.0)
    full = build_reward(str(trained.out), PPORewardConfig(**terms), str(rm_data))(hist, pages, users)
    half = build_reward(str(trained.out), PPORewardConfig(model_weight=0.5, **terms), str(rm_data))
    none = build_reward(str(trained.out), PPORewardConfig(model_weight=0.0, **terms), str(rm_data))
    assert isinstance(none, HitBonus) and reward_mix(none).item_mode == "sum"
    rules = RuleReward(prepared, "train", hit=2.0, tail=0.0, diversity=3.0, repeat=0.0)(hist, pages, users)
    assert rules.items.sum() > 0 and rules.page.sum() > 0  # both grounded terms pay something here
    model = ModelReward.from_checkpoint(trained.out)(hist, pages, users).total
    out0, out5 = none(hist, pages, users), half(hist, pages, users)
    torch.testing.assert_close(out0.total, rules.total)
    torch.testing.assert_close(out5.total, rules.total + 0.5 * model)
    torch.testing.assert_close(full.total, rules.total + model)
    torch.testing.assert_close(out5.page + out5.items.sum(-1), out5.total)
    alone = build_reward(str(trained.out), PPORewardConfig(model_weight=0.5), str(rm_data))(hist, pages, users)
    torch.testing.assert_close(alone.total, 0.5 * model)
    with pytest.raises(ConfigError, match="model_weight"):
        PPORewardConfig(model_weight=0.0)
    with pytest.raises(ConfigError, match="model_weight"):
        PPORewardConfig(model_weight=-1.0)


# --------------------------------------------------------------------------- trained weights


def test_train_top_blocks_freezes_embeddings_and_lower_blocks():
    from rlhf_ray.config import ModelConfig
    from rlhf_ray.model import build_model, train_top_blocks
    from rlhf_ray.tokens import Vocab

    vocab = Vocab(n_text=8, item_offset=8, n_items=20, user_offset=28, n_users=0, pad=0, bos=1, eos=2, hist=3,
                  page=4, sep=5, meta=6)
    lm = build_model(ModelConfig.from_dict({**TINY_MODEL, "n_layer": 3}), vocab)
    total = sum(p.numel() for p in lm.parameters())
    assert train_top_blocks(lm, -1) == {"trainable": total, "frozen": 0}
    trainable = lambda: {n.split(".")[1] + ("." + n.split(".")[2] if n.split(".")[1] == "h" else "")  # noqa: E731
                         for n, p in lm.named_parameters() if p.requires_grad}
    counts = train_top_blocks(lm, 1)
    assert trainable() == {"h.2", "ln_f"}
    assert counts["trainable"] + counts["frozen"] == total and counts["frozen"] > counts["trainable"]
    train_top_blocks(lm, 0)
    assert trainable() == {"ln_f"}
    train_top_blocks(lm, 2)  # a later call widens again
    assert trainable() == {"h.1", "h.2", "ln_f"}


def test_reward_stage_with_train_blocks_zero_trains_only_heads_and_final_norm(rm_data, tmp_path):
    """``train_blocks: 0``: after training, every backbone weight but the final layer norm is the
    starting one, bit for bit, while the heads moved."""
    import copy

    from rlhf_ray.stages.common import init_policy, open_data
    from rlhf_ray.stages.loop import fit

    cfg = reward_config(train_blocks=0, train={"max_steps": 5}, pairs={"strength": 1.0, "negatives": "random"})
    prepared = open_data(rm_data)
    lm, tok, vocab, catalog, parent = init_policy(None, cfg.model, prepared)
    spec = stage.build_spec(cfg, prepared, lm, tok, vocab, catalog, tmp_path / "reward", parent)
    before = copy.deepcopy(spec.module.state_dict())
    fit(spec, cfg.train, tmp_path / "logs")
    after = spec.module.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("heads.", "lm.transformer.ln_f.")) for k in moved), moved
    assert any(k.startswith("heads.") for k in moved)
    assert RewardConfig.from_dict({}).train_blocks == -1  # the default trains every weight
    with pytest.raises(ConfigError, match="train_blocks"):
        RewardConfig.from_dict({"train_blocks": -2})
