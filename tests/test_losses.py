"""Hand-computed values, directions and identities for rlhf_ray.losses."""
from __future__ import annotations

import math

import pytest
import torch

from rlhf_ray import losses as L

LOG2, LOG3, LOG4 = math.log(2), math.log(3), math.log(4)


def close(a, b, tol=1e-5):
    a, b = (float(x.detach()) if isinstance(x, torch.Tensor) else float(x) for x in (a, b))
    return abs(a - b) < tol


# --------------------------------------------------------------------------- supervised


def test_token_nll_hand_values_and_ignore_index():
    # token 0: logits [2,0,0], label 0 -> -log(e^2/(e^2+2)) = log(1 + 2e^-2) = 0.239537
    # token 1: logits [0,0,0], label 2 -> log 3 = 1.098612
    # token 2: ignored (-100) even though its logits would give a huge loss
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-50.0, 50.0, 0.0]]])
    labels = torch.tensor([[0, 2, -100]])
    loss, stats = L.token_nll(logits, labels)
    expected = (math.log(1 + 2 * math.exp(-2)) + LOG3) / 2  # 0.669075
    assert close(loss, expected)
    assert close(stats["nll"], expected)
    assert stats["ntokens"] == 2


def test_token_nll_all_ignored_is_zero_not_nan():
    loss, stats = L.token_nll(torch.randn(2, 3, 5), torch.full((2, 3), -100))
    assert float(loss) == 0.0 and stats["ntokens"] == 0


def test_rating_mse():
    # ((1-0)^2 + (2-4)^2) / 2 = 2.5
    loss, stats = L.rating_mse(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
    assert close(loss, 2.5) and close(stats["rmse"], math.sqrt(2.5))


def test_bradley_terry_hand_values():
    # pair 0: r_c=1, r_r=0 -> log(1 + e^-1) = 0.313262
    # pair 1: r_c=0, r_r=1 -> log(1 + e^+1) = 1.313262
    loss, stats = L.bradley_terry(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert close(loss, (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2)  # 0.813262
    assert stats["accuracy"] == 0.5
    assert close(stats["margin"], 0.0)
    single, _ = L.bradley_terry(torch.tensor([1.0]), torch.tensor([0.0]))
    assert close(single, math.log(1 + math.exp(-1)))


# --------------------------------------------------------------------------- PPO


def _ppo_example():
    # old logprobs 0 -> ratio = exp(logprobs); eps = 0.2; 4th token masked out.
    ratios = torch.tensor([[1.5, 0.5, 1.1, 9.0]])
    logprobs = torch.log(ratios).requires_grad_(True)
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    return logprobs, old, adv, mask


def test_ppo_policy_loss_hand_example():
    logprobs, old, adv, mask = _ppo_example()
    loss, stats = L.ppo_policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    # t0: rho=1.5, A=+1: max(-1.5, -1.2) = -1.2   (clipped branch binds)
    # t1: rho=0.5, A=+1: max(-0.5, -0.8) = -0.5   (outside range but not binding)
    # t2: rho=1.1, A=-1: max( 1.1,  1.1) =  1.1
    # loss = (-1.2 - 0.5 + 1.1) / 3 = -0.2
    assert close(loss, -0.2)
    assert close(stats["clipfrac"], 1 / 3)
    # k3: (rho-1) - log rho = 0.094535 + 0.193147 + 0.004690 = 0.292372 -> /3
    k3 = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert close(stats["approx_kl"], k3)  # 0.097457
    assert close(stats["ratio_mean"], (1.5 + 0.5 + 1.1) / 3)
    loss.backward()
    grad = logprobs.grad[0]
    # clipped token and masked token get no gradient; d/dlogp (-A rho)/3 = -A rho / 3
    assert grad[0] == 0.0 and grad[3] == 0.0
    assert close(grad[1], -0.5 / 3) and close(grad[2], 1.1 / 3)


def test_ppo_no_clip_when_ratio_one():
    lp = torch.randn(3, 5)
    loss, stats = L.ppo_policy_loss(lp, lp.clone(), torch.ones(3, 5), torch.ones(3, 5))
    assert close(loss, -1.0) and stats["clipfrac"] == 0.0 and close(stats["approx_kl"], 0.0)


def test_value_loss_hand_example():
    # eps = 0.2, old values 0, returns 1; 3rd token masked.
    # t0: v=0.5: (0.5-1)^2=0.25; v_clip=0.2: (0.2-1)^2=0.64 -> 0.64 (clipped)
    # t1: v=0.1: (0.1-1)^2=0.81; v_clip=0.1 -> 0.81 (not clipped)
    # loss = 0.5 * (0.64 + 0.81) / 2 = 0.3625
    values = torch.tensor([[0.5, 0.1, 7.0]])
    loss, stats = L.value_loss(values, torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([[1, 1, 0]]))
    assert close(loss, 0.3625)
    assert close(stats["vf_clipfrac"], 0.5)


def test_entropy_hand_values_and_allowed_mask():
    # row token 0: uniform over 4 -> log 4; token 1 masked out.
    logits = torch.zeros(1, 2, 4)
    logits[0, 1] = torch.tensor([10.0, 0.0, 0.0, 0.0])
    mask = torch.tensor([[1, 0]])
    assert close(L.entropy_from_logits(logits, mask), LOG4)
    # allowed = items {0, 1}; logits [0, log 3, 20, 20] -> p = [1/4, 3/4] on allowed
    # H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.346574 + 0.215762 = 0.562335
    logits = torch.tensor([[[0.0, LOG3, 20.0, 20.0]]], requires_grad=True)
    allowed = torch.tensor([True, True, False, False])
    ent = L.entropy_from_logits(logits, torch.ones(1, 1), allowed=allowed)
    assert close(ent, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    ent.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[0, 0, 2:] == 0).all()
    # without the restriction the two large logits dominate: H ~= log 2
    assert close(L.entropy_from_logits(logits.detach(), torch.ones(1, 1)), LOG2, tol=1e-6)


def test_kl_penalty_zero_when_equal():
    lp = torch.randn(3, 4)
    for kind in ("k1", "k2", "k3"):
        assert torch.equal(L.kl_penalty(lp, lp.clone(), kind), torch.zeros(3, 4))


def test_kl_penalty_hand_values_and_k3_sign():
    # logp=0, ref=log 0.5 -> log r = log 2
    #   k1 = log 2 = 0.693147; k2 = 0.5 (log 2)^2 = 0.240227
    #   k3 = exp(ref-logp) - 1 - (ref-logp) = 0.5 - 1 + log 2 = 0.193147
    # logp=log 0.5, ref=0 -> log r = -log 2: k3 = 2 - 1 - log 2 = 0.306853
    # (the wrong sign, exp(log r) - 1 - log r, would swap the two k3 values)
    logp = torch.tensor([[0.0, math.log(0.5)]])
    ref = torch.tensor([[math.log(0.5), 0.0]])
    k1, k2, k3 = (L.kl_penalty(logp, ref, k) for k in ("k1", "k2", "k3"))
    assert close(k1[0, 0], LOG2) and close(k1[0, 1], -LOG2)
    assert close(k2[0, 0], 0.5 * LOG2**2) and close(k2[0, 1], 0.5 * LOG2**2)
    assert close(k3[0, 0], 0.5 - 1 + LOG2) and close(k3[0, 1], 2 - 1 - LOG2)
    with pytest.raises(ValueError, match="k4"):
        L.kl_penalty(logp, ref, "k4")


def test_gae_hand_example_with_padded_row():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    # row 0 (3 valid): r = [1, 0, 2], V = [0.5, 1.0, 1.5]
    #   d2 = 2 + 0       - 1.5 = 0.5  ; A2 = 0.5
    #   d1 = 0 + 0.9*1.5 - 1.0 = 0.35 ; A1 = 0.35 + 0.72*0.5  = 0.71
    #   d0 = 1 + 0.9*1.0 - 0.5 = 1.4  ; A0 = 1.4  + 0.72*0.71 = 1.9112
    #   returns = A + V = [2.4112, 1.71, 2.0]
    # row 1 (2 valid, 3rd padded with junk): r = [0, 3], V = [1, 2]
    #   d1 = 3 + 0 - 2 = 1 ; A1 = 1
    #   d0 = 0 + 0.9*2 - 1 = 0.8 ; A0 = 0.8 + 0.72*1 = 1.52
    #   returns = [2.52, 3.0, 0]
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 99.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [1.0, 2.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = L.gae(rewards, values, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(adv, torch.tensor([[1.9112, 0.71, 0.5], [1.52, 1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.4112, 1.71, 2.0], [2.52, 3.0, 0.0]]))


def test_whiten_masked():
    # valid x = [1, 2, 3]: mean 2, population var 2/3 -> z = [-1.224745, 0, 1.224745]
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    z = 1 / math.sqrt(2 / 3)
    torch.testing.assert_close(L.whiten(x, mask), torch.tensor([[-z, 0.0, z, 0.0]]))
    torch.testing.assert_close(L.whiten(x, mask, shift_mean=False), torch.tensor([[2 - z, 2.0, 2 + z, 0.0]]))


def test_adaptive_kl_controller_direction_and_state():
    ctl = L.AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    # KL=12 > target: e = clip(12/6 - 1) = 0.2; beta *= 1 + 0.2 * 1000/10000 = 1.02
    assert close(ctl.update(current_kl=12.0, n_steps=1000), 0.204)
    # KL=3 < target: e = clip(-0.5) = -0.2; beta *= 0.98
    assert close(ctl.update(current_kl=3.0, n_steps=1000), 0.204 * 0.98)
    # KL on target: unchanged
    before = ctl.value
    assert close(ctl.update(current_kl=6.0, n_steps=1000), before)
    restored = L.AdaptiveKLController(1.0, 1.0, 1)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value and restored.target == 6.0 and restored.horizon == 10_000
    fixed = L.FixedKLController(0.05)
    assert fixed.update(100.0, 1000) == 0.05 and fixed.value == 0.05
    fixed2 = L.FixedKLController(1.0)
    fixed2.load_state_dict(fixed.state_dict())
    assert fixed2.value == 0.05


# --------------------------------------------------------------------------- LPO4Rec


def test_lpo_softmax_hand_values():
    # s+=0, s-=[0,0,0], beta=1: -log(1/4) = log 4 (the probability itself would be 0.25)
    loss, stats = L.lpo_softmax(torch.tensor([0.0]), torch.zeros(1, 3))
    assert close(loss, LOG4) and close(stats["pos_prob"], 0.25)
    # s+=1, s-=[0], beta=2: -log(e^2/(e^2+1)) = log(1+e^-2) = 0.126928
    loss, stats = L.lpo_softmax(torch.tensor([1.0]), torch.tensor([[0.0]]), beta=2.0)
    assert close(loss, math.log(1 + math.exp(-2)))
    assert stats["accuracy"] == 1.0 and close(stats["pos_margin"], 1.0)


def test_lpo_softmax_weights_and_reduction():
    # ex0: s+=0, s-=[0]     -> log 2 ; ex1: s+=0, s-=[log 3] -> -log(1/4) = log 4
    s_pos, s_neg = torch.tensor([0.0, 0.0]), torch.tensor([[0.0], [LOG3]])
    w = torch.tensor([1.0, 3.0])
    per, _ = L.lpo_softmax(s_pos, s_neg, weights=None, reduction="none")
    torch.testing.assert_close(per, torch.tensor([LOG2, LOG4]))
    per_w, _ = L.lpo_softmax(s_pos, s_neg, weights=w, reduction="none")
    torch.testing.assert_close(per_w, torch.tensor([LOG2, 3 * LOG4]))
    # mean = (1 log 2 + 3 log 4) / (1 + 3) = 1.213008
    mean_w, stats = L.lpo_softmax(s_pos, s_neg, weights=w)
    assert close(mean_w, (LOG2 + 3 * LOG4) / 4)
    assert close(stats["pos_prob"], (0.5 + 0.25) / 2) and stats["accuracy"] == 0.0
    with pytest.raises(ValueError):
        L.lpo_softmax(s_pos, s_neg, reduction="max")


@pytest.mark.parametrize("fn", [L.lpo_softmax, L.lpo_sigmoid])
def test_lpo_direction(fn):
    s_neg = torch.tensor([[0.3, -0.2, 0.1]])
    by_pos = [float(fn(torch.tensor([s]), s_neg, beta=1.5)[0]) for s in (-1.0, 0.0, 1.0, 2.0)]
    assert all(a > b for a, b in zip(by_pos, by_pos[1:])), by_pos  # falls as s+ rises
    by_neg = []
    for s in (-1.0, 0.0, 1.0, 2.0):
        neg = s_neg.clone()
        neg[0, 1] = s
        by_neg.append(float(fn(torch.tensor([0.5]), neg, beta=1.5)[0]))
    assert all(a < b for a, b in zip(by_neg, by_neg[1:])), by_neg  # rises as s-_j rises
    s_pos = torch.tensor([0.5], requires_grad=True)
    s_neg = s_neg.clone().requires_grad_(True)
    fn(s_pos, s_neg, beta=1.5)[0].backward()
    assert s_pos.grad.item() < 0 and (s_neg.grad > 0).all()


def test_lpo_sigmoid_hand_value_is_sum_over_negatives():
    # s+=1, s-=[0, 1]: -log sigma(1) - log sigma(0) = 0.313262 + 0.693147 = 1.006409
    loss, stats = L.lpo_sigmoid(torch.tensor([1.0]), torch.tensor([[0.0, 1.0]]))
    assert close(loss, math.log(1 + math.exp(-1)) + LOG2)
    assert stats["pair_accuracy"] == 0.5 and stats["accuracy"] == 0.0


def test_dpo_hand_value():
    # beta=0.5: r_c = 0.5(-1 - -1.5) = 0.25, r_r = 0.5(-2 - -1.5) = -0.25
    # loss = -log sigma(0.5) = log(1 + e^-0.5) = 0.474077
    loss, stats = L.dpo(
        torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5
    )
    assert close(loss, math.log(1 + math.exp(-0.5)))
    assert close(stats["reward_margin"], 0.5) and stats["accuracy"] == 1.0


def test_sdpo_equals_dpo_with_one_negative():
    g = torch.Generator().manual_seed(0)
    pi_c, pi_r, ref_c, ref_r = (torch.randn(16, generator=g) * 3 for _ in range(4))
    for reduction in ("mean", "none"):
        d, _ = L.dpo(pi_c, pi_r, ref_c, ref_r, beta=0.3, reduction=reduction)
        s, _ = L.sdpo(pi_c, pi_r[:, None], ref_c, ref_r[:, None], beta=0.3, reduction=reduction)
        assert torch.equal(d, s)


def test_sdpo_hand_value_two_negatives():
    # r+ = 0, r- = [0, 0], beta=1: log sum exp(0, 0) = log 2
    # loss = -log sigma(-log 2) = log(1 + e^{log 2}) = log 3
    loss, _ = L.sdpo(torch.zeros(1), torch.zeros(1, 2), torch.zeros(1), torch.zeros(1, 2), beta=1.0)
    assert close(loss, LOG3)


def test_tail_reweight():
    is_tail = torch.tensor([True, False, False, False])
    assert torch.equal(L.tail_reweight(is_tail, 0.0), torch.ones(4))
    # strength 1: logits [1,0,0,0]; w = 4 softmax -> [4e/(e+3), 4/(e+3) x3] = [1.901470, 0.699510]
    w = L.tail_reweight(is_tail, 1.0)
    e = math.e
    torch.testing.assert_close(w, torch.tensor([4 * e / (e + 3)] + [4 / (e + 3)] * 3))
    assert close(w.mean(), 1.0) and w[0] > w[1]
    # with losses (all head): l=[0,4] -> mean 2, std 2, z=[-1,1];
    #   strength .5 -> w = 2 softmax([-.5,.5]) = [2/(1+e), 2e/(1+e)] = [0.537883, 1.462117]
    losses = torch.tensor([0.0, 4.0], requires_grad=True)
    w = L.tail_reweight(torch.tensor([False, False]), 0.5, losses)
    torch.testing.assert_close(w, torch.tensor([2 / (1 + e), 2 * e / (1 + e)]))
    assert not w.requires_grad
