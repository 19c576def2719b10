"""PPO pieces that need no Ray: token-reward assembly, batching, placement plan, the
reward-hacking monitor, resumable-state bookkeeping, PPOConfig."""
import json
import math

import numpy as np
import pytest
import torch

from actors.batching import concat, split, take
from actors.experience import Experience, PromptBatch, RewardMix, assemble, last_slot, minibatches, token_rewards
from actors.monitor import HackingMonitor
from actors.placement import RoleSpec, colocated_bundles
from actors.reward_actor import reward_mix
from actors.state import RunState, complete, iter_name, rng_state, set_rng_state
from rlhf_ray.config import ConfigError, PPOConfig
from rlhf_ray.generation import build_prompts
from rlhf_ray.tokens import Vocab


def _vocab(n_items: int = 10, n_users: int = 0) -> Vocab:
    return Vocab(n_text=8, item_offset=8, n_items=n_items, user_offset=8 + n_items, n_users=n_users, pad=0, bos=1,
                 eos=2, hist=3, page=4, sep=5, meta=6)


# --------------------------------------------------------------------------- token rewards


def test_token_rewards_mixed_reward_by_hand():
    # alpha = 0.25, K = 3: items scaled (1 - alpha) / K' = 0.25 per slot, page alpha at the last valid slot
    page = torch.tensor([2.0, -1.0])
    items = torch.tensor([[1.0, 2.0, 3.0], [4.0, 8.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # row 1: K' = 2
    kl = torch.tensor([[0.1, 0.0, -0.2], [0.3, 0.1, 0.0]])
    mix = RewardMix(page_coef=0.25, item_coef=0.75, item_mode="mean")
    r = token_rewards(page, items, mask, kl, kl_coef=0.5, mix=mix)
    expected = torch.tensor([
        [0.25 * 1 - 0.05, 0.25 * 2 - 0.0, 0.25 * 3 + 0.25 * 2.0 + 0.1],
        [0.375 * 4 - 0.15, 0.375 * 8 + 0.25 * -1.0 - 0.05, 0.0],
    ])
    assert torch.allclose(r, expected, atol=1e-6), (r, expected)
    # without KL the slots sum to R = alpha * page + (1 - alpha) * mean_t items
    r0 = token_rewards(page, items, mask, torch.zeros_like(kl), 0.5, mix)
    total = 0.25 * page + 0.75 * torch.tensor([2.0, 6.0])
    assert torch.allclose(r0.sum(-1), total, atol=1e-6)


def test_token_rewards_sum_mode_and_last_slot():
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    assert last_slot(mask).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    r = token_rewards(torch.tensor([1.0, 1.0, 0.5]), torch.ones(3, 3), mask, torch.zeros(3, 3), 0.1,
                      RewardMix(1.0, 1.0, "sum"))
    assert r.tolist() == [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.5]]


def test_assemble_experience_by_hand():
    """KL, token rewards, GAE (gamma 0.9, lambda 0.8) and whitening written out for every row:
    a full page (K' = 3), one with a padded slot (K' = 2) and one with a single item."""
    B = 3
    pages = torch.tensor([[4, 1, 2], [0, 5, -1], [3, -1, -1]])
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -1.0, 0.0], [-0.7, 0.0, 0.0]])
    ref = torch.tensor([[-1.2, -2.0, -0.4], [-1.5, -0.5, 0.0], [-1.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 9.0], [0.4, 5.0, 5.0]])  # 9.0, 5.0 at padding: must not leak
    page = torch.tensor([1.0, 2.0, -0.5])
    items = torch.tensor([[0.0, 1.0, 0.5], [1.0, -1.0, 7.0], [2.0, 3.0, 3.0]])  # 7.0, 3.0 at padding
    mix = RewardMix(0.5, 0.5, "mean")
    exp = assemble(pages, logp, ref, values, page, items, total=torch.zeros(B), mix=mix,
                   kl_coef=0.1, gamma=0.9, lam=0.8, whiten_advantages=False)
    # k1 KL: logp - ref at valid slots, 0 at padding
    assert torch.allclose(exp.kl, torch.tensor([[0.2, 0.0, -0.1], [0.0, -0.5, 0.0], [0.3, 0.0, 0.0]]), atol=1e-6)
    # r_t = 0.5 / K' * item_t + 0.5 * page at the last valid slot - 0.1 * kl_t
    r = torch.tensor([[0.5 / 3 * 0.0 - 0.1 * 0.2, 0.5 / 3 * 1.0 - 0.1 * 0.0, 0.5 / 3 * 0.5 + 0.5 * 1.0 - 0.1 * -0.1],
                      [0.5 / 2 * 1.0 - 0.1 * 0.0, 0.5 / 2 * -1.0 + 0.5 * 2.0 - 0.1 * -0.5, 0.0],
                      [0.5 / 1 * 2.0 + 0.5 * -0.5 - 0.1 * 0.3, 0.0, 0.0]])
    assert torch.allclose(r, torch.tensor([[-0.02, 1 / 6, 0.5933333], [0.25, 0.8, 0.0], [0.72, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(exp.rewards, r, atol=1e-6)
    # GAE from the last valid slot back: delta_t = r_t + 0.9 V_{t+1} - V_t (V after the last valid slot = 0),
    # A_t = delta_t + 0.9 * 0.8 A_{t+1}; returns = A + V
    # row 0 (K' = 3)
    d02 = 0.5933333 + 0.9 * 0.0 - 0.1  # 0.4933333
    d01 = 1 / 6 + 0.9 * 0.1 - 0.2  # 0.0566667
    d00 = -0.02 + 0.9 * 0.2 - 0.5  # -0.34
    a02 = d02
    a01 = d01 + 0.72 * a02  # 0.4118667
    a00 = d00 + 0.72 * a01  # -0.043456
    # row 1 (K' = 2): the padded slot's value 9.0 is not V_2
    d11 = 0.8 + 0.9 * 0.0 - 0.3  # 0.5
    d10 = 0.25 + 0.9 * 0.3 - 0.3  # 0.22
    a11 = d11
    a10 = d10 + 0.72 * a11  # 0.58
    # row 2 (K' = 1)
    a20 = 0.72 + 0.9 * 0.0 - 0.4  # 0.32
    adv = torch.tensor([[a00, a01, a02], [a10, a11, 0.0], [a20, 0.0, 0.0]])
    assert torch.allclose(adv, torch.tensor([[-0.043456, 0.4118667, 0.4933333], [0.58, 0.5, 0.0], [0.32, 0.0, 0.0]]),
                          atol=1e-6)
    assert torch.allclose(exp.advantages, adv, atol=1e-6)
    ret = torch.tensor([[a00 + 0.5, a01 + 0.2, a02 + 0.1], [a10 + 0.3, a11 + 0.3, 0.0], [a20 + 0.4, 0.0, 0.0]])
    assert torch.allclose(ret, torch.tensor([[0.456544, 0.6118667, 0.5933333], [0.88, 0.8, 0.0], [0.72, 0.0, 0.0]]),
                          atol=1e-6)
    assert torch.allclose(exp.returns, ret, atol=1e-6)
    assert float(exp.item_rewards[1, 2]) == 0.0 and float(exp.item_rewards[2, 1:].abs().sum()) == 0.0
    # whitening over the 6 valid slots: population mean and variance, padding stays 0
    valid = [a00, a01, a02, a10, a11, a20]
    mu = sum(valid) / 6
    sd = math.sqrt(sum((a - mu) ** 2 for a in valid) / 6 + 1e-8)
    white = assemble(pages, logp, ref, values, page, items, torch.zeros(B), mix=mix, kl_coef=0.1,
                     gamma=0.9, lam=0.8, whiten_advantages=True)
    expected = torch.tensor([[(a00 - mu) / sd, (a01 - mu) / sd, (a02 - mu) / sd],
                             [(a10 - mu) / sd, (a11 - mu) / sd, 0.0], [(a20 - mu) / sd, 0.0, 0.0]])
    assert torch.allclose(white.advantages, expected, atol=1e-5)
    assert torch.equal(white.returns, exp.returns)  # returns use the raw advantages


def test_kl_zero_when_policy_equals_reference():
    logp = -torch.rand(4, 5)
    exp = assemble(torch.arange(20).reshape(4, 5), logp, logp.clone(), torch.zeros(4, 5),
                   torch.ones(4), torch.ones(4, 5), torch.ones(4), mix=RewardMix(1.0, 1.0, "sum"), kl_coef=1.0,
                   kl_estimator="k3")
    assert float(exp.kl.abs().max()) == 0.0


def test_reward_mix_from_reward_function():
    class Mixed:
        alpha = 0.3

    m = reward_mix(Mixed())
    assert (m.page_coef, round(m.item_coef, 6), m.item_mode) == (0.3, 0.7, "mean")
    assert reward_mix(object()) == RewardMix(1.0, 1.0, "sum")


# --------------------------------------------------------------------------- batching


def test_split_take_concat_round_trip():
    exp = Experience(pages=torch.arange(18).reshape(6, 3), mask=torch.ones(6, 3, dtype=torch.bool),
                     **{k: torch.randn(6, 3) for k in ("logprobs", "ref_logprobs", "values", "item_rewards", "kl",
                                                       "rewards", "advantages", "returns")},
                     page_reward=torch.randn(6), total_reward=torch.randn(6))
    shards = split(exp, 3, equal=True)
    assert [len(s) for s in shards] == [2, 2, 2]
    assert torch.equal(shards[1].advantages, exp.advantages[2:4])
    back = concat(shards)
    assert torch.equal(back.advantages, exp.advantages) and torch.equal(back.pages, exp.pages)
    picked = take(exp, [5, 0])
    assert picked.pages.tolist() == [exp.pages[5].tolist(), exp.pages[0].tolist()]
    with pytest.raises(ValueError, match="equal shards"):
        split(exp, 4, equal=True)
    assert [len(x) for x in split([[1], [2], [3]], 2)] == [2, 1]


@pytest.mark.parametrize("n_users", [0, 4])
def test_prompt_batch_shards_build_the_whole_batchs_rows(n_users):
    """Each rank builds its rows' prompts from the PromptBatch: tokens padded to the whole batch's
    length and the seen-item mask equal to the rows of what the driver used to build for all B."""
    vocab = _vocab(n_items=10, n_users=n_users)
    hist = [[1, 2], [3, 4, 5, 6, 7], [9], [0, 8, 2, 5]]  # row 1 is the longest prompt (3 of 5 items kept)
    users = torch.tensor([3, 0, 2, 1])
    batch = PromptBatch.make(hist, users, vocab, max_history=3, exclude_seen=True)
    whole = build_prompts(hist, vocab, 3, exclude_seen=True, user_idx=users.tolist() if n_users else None)
    assert batch.length == whole.input_ids.shape[1] == 6 + (n_users > 0)
    for shard, lo in zip(split(batch, 2), (0, 2)):  # rows 2, 3 alone would pad to fewer tokens
        got = shard.prompts(vocab)
        for name in ("input_ids", "attention_mask", "blocked"):
            assert torch.equal(getattr(got, name), getattr(whole, name)[lo:lo + 2]), name
    assert batch.prompts(vocab).blocked[1].nonzero().flatten().tolist() == [3, 4, 5, 6, 7]  # all of it, not the window
    loose = PromptBatch.make(hist, users, vocab, max_history=3, exclude_seen=False)
    assert not loose.prompts(vocab).blocked.any()
    assert take(batch, []).prompts(vocab).input_ids.shape == (0, batch.length)  # a rank given no rows


def test_minibatches_are_seeded_permutations():
    a = minibatches(10, 4, epochs=2, seed=3)
    assert [len(i) for i in a] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(a[:3]).tolist()) == list(range(10))
    assert all(torch.equal(x, y) for x, y in zip(a, minibatches(10, 4, 2, 3)))
    assert not all(torch.equal(x, y) for x, y in zip(a, minibatches(10, 4, 2, 4)))


# --------------------------------------------------------------------------- placement


def test_colocated_bundles_sum_requests_and_spread_ranks():
    roles = [RoleSpec("policy", 2, 0.25, 0.0), RoleSpec("critic", 2, 0.25, 0.0), RoleSpec("reference", 1, 0.25, 0.0),
             RoleSpec("reward", 1, 0.25, 0.0), RoleSpec("rollout", 1, 0.25, 0.0)]
    bundles, assign = colocated_bundles(roles)
    assert len(bundles) == 2
    assert math.isclose(sum(b["CPU"] for b in bundles), 1.75)
    assert sorted(assign["policy"]) == [0, 1] and sorted(assign["critic"]) == [0, 1]
    assert max(b["CPU"] for b in bundles) <= 1.0  # single-rank roles balanced over the bundles
    gpu, _ = colocated_bundles([RoleSpec("policy", 1, 0.1, 0.5), RoleSpec("rollout", 1, 0.1, 0.5)])
    assert gpu == [{"CPU": 0.2, "GPU": 1.0}]


# --------------------------------------------------------------------------- monitor


def test_hacking_monitor_flags_reward_up_quality_down():
    mon = HackingMonitor(threshold=0.1)
    assert mon.observe_validation(0, {"val/ndcg@10": 0.20, "val/page_ild": 0.5}) is None
    mon.observe_reward(1.0)
    mon.observe_reward(1.2)
    assert mon.observe_validation(2, {"val/ndcg@10": 0.19, "val/page_ild": 0.5}) is None  # 5% drop: fine
    mon.observe_reward(1.5)
    alert = mon.observe_validation(3, {"val/ndcg@10": 0.20, "val/page_ild": 0.4})  # ILD -20% while reward up
    assert alert and alert["metric"] == "val/page_ild" and math.isclose(alert["drop"], 0.2)
    mon2 = HackingMonitor.from_state(json.loads(json.dumps(mon.state_dict())))
    mon2.observe_reward(0.5)  # reward below the baseline: a quality drop alone is not hacking
    assert mon2.observe_validation(4, {"val/ndcg@10": 0.1, "val/page_ild": 0.1}) is None
    assert len(mon2.alerts) == 1


def test_hacking_monitor_needs_the_drop_outside_the_paired_interval():
    """With per-user values, a fall past the threshold is flagged only when the paired interval
    of (now - baseline) over the users lies below 0; noise of the same size is dismissed."""
    rng = np.random.default_rng(0)
    base = rng.random(300)
    ild = np.full(300, 0.5)
    mon = HackingMonitor(threshold=0.05)
    mon.observe_validation(0, {"val/ndcg@10": base.mean(), "val/page_ild": 0.5},
                           {"val/ndcg@10": base.tolist(), "val/page_ild": ild.tolist()})
    noise = rng.normal(0, 0.6, 300)
    noisy = base + noise - noise.mean() - 0.04  # the mean falls 7%; per-user noise is far larger
    assert (base.mean() - noisy.mean()) / base.mean() > 0.05
    mon.observe_reward(1.0)
    mon.observe_reward(2.0)
    assert mon.observe_validation(5, {"val/ndcg@10": noisy.mean(), "val/page_ild": 0.5},
                                  {"val/ndcg@10": noisy.tolist(), "val/page_ild": ild.tolist()}) is None
    assert mon.dismissed == 1 and not mon.alerts
    real = base * 0.8  # every user loses 20%
    mon.observe_reward(2.0)
    alert = mon.observe_validation(10, {"val/ndcg@10": real.mean(), "val/page_ild": 0.5},
                                   {"val/ndcg@10": real.tolist(), "val/page_ild": ild.tolist()})
    assert alert and alert["metric"] == "val/ndcg@10" and alert["users"] == 300 and alert["diff_hi"] < 0
    mon2 = HackingMonitor.from_state(json.loads(json.dumps(mon.state_dict())))
    assert mon2.baseline_users["val/ndcg@10"] == base.tolist() and mon2.dismissed == 1
    old = {k: v for k, v in mon.state_dict().items() if k not in ("baseline_users", "dismissed")}
    assert HackingMonitor.from_state(old).baseline_users == {}  # a state saved before the interval check


# --------------------------------------------------------------------------- resumable state


@pytest.mark.parametrize("uri", [False, True], ids=["local-path", "file-uri"])
def test_run_state_atomic_latest_and_half_written(tmp_path, uri):
    from rlhf_ray import storage

    root = f"file://{tmp_path}/state" if uri else str(tmp_path / "state")
    st = RunState(root, keep=2)
    assert st.latest() is None

    def engines(d: str) -> None:  # what the actors do: publish their files into the state directory
        storage.write_text(storage.join(d, "policy", "state.pt"), "weights")

    for it in (1, 2, 3):
        st.write(it, engines, {"iteration": it})
    assert storage.basename(st.latest()) == iter_name(3)
    assert sorted(p.name for p in (tmp_path / "state").iterdir() if p.name.startswith("iter_")) == \
        [iter_name(2), iter_name(3)]

    def crash(d: str) -> None:
        engines(d)
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        st.write(4, crash, {"iteration": 4})
    assert storage.basename(st.latest()) == iter_name(3)
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.startswith(".iter_")]
    # a directory with an iter_ name but no controller.json (e.g. copied by hand, truncated, or a
    # rewrite killed before its controller.json was put) is not complete
    bad = tmp_path / "state" / iter_name(9)
    (bad / "policy").mkdir(parents=True)
    (tmp_path / "state" / "latest").write_text(iter_name(9))
    assert not complete(bad)
    assert storage.basename(st.latest()) == iter_name(3)
    # rewriting a state that exists (a resumed run passing the same iteration) replaces it whole
    st.write(3, engines, {"iteration": 3, "again": True})
    assert json.loads((tmp_path / "state" / iter_name(3) / "controller.json").read_text())["again"] is True


def test_rng_state_round_trip():
    s = json.loads(json.dumps(rng_state()))
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(s)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# --------------------------------------------------------------------------- config


def test_ppo_config_partial_sections_keep_ppo_defaults():
    cfg = PPOConfig.from_dict({"policy": {"ranks": 2, "train": {"zero_stage": 3}}})
    assert cfg.policy.train.zero_stage == 3 and cfg.policy.train.lr == PPOConfig().policy.train.lr
    assert cfg.policy.train.batch_size == PPOConfig().policy.train.batch_size
    with pytest.raises(ConfigError, match="rollout_batch_size"):
        PPOConfig.from_dict({"rollout_batch_size": 48})
    with pytest.raises(ConfigError, match="ranks"):
        PPOConfig.from_dict({"policy": {"ranks": 3}})
    with pytest.raises(ConfigError, match="alpha"):
        PPOConfig.from_dict({"reward": {"alpha": 1.5}})


def test_critic_values_read_the_states_that_emit_each_slot():
    """V(s_k) is the value head on the final hidden state at position L - 1 + k of prompt + page
    (the full model's last hidden state), 0 at empty slots; the critic runs the backbone only."""
    from actors.models import CriticModel
    from rlhf_ray.config import ModelConfig
    from rlhf_ray.generation import _with_page
    from rlhf_ray.model import build_model, positions

    vocab = _vocab(n_items=12)
    torch.manual_seed(0)
    lm = build_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, dropout=0.0), vocab).eval()
    critic = CriticModel(lm, vocab, seed=3)
    prompts = build_prompts([[1, 2, 3], [4], [5, 6]], vocab, 10)
    pages = torch.tensor([[7, 8, 9], [10, -1, -1], [0, 11, -1]])
    got = critic(prompts, pages)
    ids, am = _with_page(prompts.input_ids, prompts.attention_mask, pages, vocab)
    out = lm(input_ids=ids, attention_mask=am, position_ids=positions(am), output_hidden_states=True)
    L = prompts.input_ids.shape[1]
    want = critic.value_head(out.hidden_states[-1][:, L - 1: L + 2]) * (pages >= 0)
    torch.testing.assert_close(got, want)
    assert (got[pages < 0] == 0).all()
