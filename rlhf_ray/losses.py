"""Losses for reward modelling, PPO and listwise preference optimisation.

Every loss is a small pure function returning ``(loss, stats)``: ``loss`` is a
scalar tensor carrying the graph, ``stats`` a ``dict[str, float]`` of detached
diagnostics ready to log (accuracy, margins, clip fractions, approximate KL).
Exceptions are documented: ``entropy_from_logits`` and ``kl_penalty`` return
tensors, ``gae``/``whiten`` transform tensors, ``tail_reweight`` returns weights.

Papers:
  * PageLLM (arXiv 2506.09084): reward model trained with Bradley-Terry on page
    pairs, then PPO with a per-token KL penalty to a frozen reference.
  * LPO4Rec (arXiv 2507.02255): listwise preference optimisation, one positive
    against N negatives, adaptive per-example reweighting towards tail items.
  * PPO: Schulman et al. 2017; GAE: Schulman et al. 2016; adaptive KL: Ziegler
    et al. 2019; DPO: Rafailov et al. 2023; S-DPO: Chen et al. 2024.

Shapes: B = batch, T = sequence (page) length, V = vocabulary, N = negatives.
Masks are 0/1 (float or bool) with 1 on tokens that count.

Imports torch only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
Stats = dict[str, float]


# --------------------------------------------------------------------------- helpers


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """sum(x * m) / max(sum(m), 1): mean over the tokens where ``mask`` is 1."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def _reduce(per_example: Tensor, weights: Tensor | None, reduction: str) -> Tensor:
    """Weighted reduction of per-example losses (B,).

    ``"mean"``: sum_b w_b L_b / sum_b w_b (plain mean when ``weights`` is None).
    ``"sum"``:  sum_b w_b L_b.
    ``"none"``: w_b L_b, shape (B,) (L_b when ``weights`` is None).
    """
    weighted = per_example if weights is None else per_example * weights
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    if reduction == "mean":
        denom = per_example.new_tensor(per_example.numel()) if weights is None else weights.sum()
        return weighted.sum() / denom
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _f(x: Tensor) -> float:
    return float(x.detach().float().mean()) if x.numel() else 0.0


# --------------------------------------------------------------------------- supervised


def token_nll(logits: Tensor, labels: Tensor, smoothing: float = 0.0) -> tuple[Tensor, Stats]:
    """Next-token cross-entropy, mean over non-ignored tokens.

    L = -(1/|M|) sum_{(b,t) in M} log softmax(logits[b,t])[labels[b,t]],
    M = {(b,t): labels[b,t] != -100}. ``labels`` are already aligned with
    ``logits`` (the caller shifts). No valid tokens -> loss 0. With ``smoothing`` eps > 0 the
    target is (1 - eps) on the label plus eps spread evenly over all V classes (Szegedy et al.
    2016): L_eps = (1 - eps) L + eps * mean_v(-log softmax(logits)_v). The stats' ``nll`` is
    always the plain L (comparable across smoothing settings); ``smoothed`` is L_eps when eps > 0.
    """
    vocab = logits.size(-1)
    target = labels.reshape(-1)  # (B*T,)
    keep = target != IGNORE_INDEX
    ntokens = keep.sum()
    if not smoothing:
        loss = F.cross_entropy(logits.reshape(-1, vocab).float(), target, ignore_index=IGNORE_INDEX,
                               reduction="sum") / ntokens.clamp(min=1)
        return loss, {"nll": float(loss.detach()), "ntokens": float(ntokens)}
    logp = logits.reshape(-1, vocab).float()[keep].log_softmax(-1)  # (M, V), one pass for both terms
    plain = -logp.gather(1, target[keep][:, None]).sum() / ntokens.clamp(min=1)
    uniform = -logp.mean(-1).sum() / ntokens.clamp(min=1)
    loss = (1.0 - smoothing) * plain + smoothing * uniform
    return loss, {"nll": float(plain.detach()), "smoothed": float(loss.detach()), "ntokens": float(ntokens)}


def sampled_item_nll(pos_logit: Tensor, neg_logits: Tensor, log_correction: Tensor, keep: Tensor) -> Tensor:
    """Per-row sampled-softmax NLL of a target item against shared negatives, (P,).

    ``pos_logit`` (P,) the target's logit o_t; ``neg_logits`` (P, S) the logits of S negatives
    drawn with replacement from q for the whole batch; ``log_correction`` (S,) log(S q_j)
    (:func:`rlhf_ray.sampling.shared_negatives`); ``keep`` (P, S) bool, False where negative s
    does not count for row p (it is the row's target, an "accidental hit", or an item the row's
    distribution excludes, e.g. seen items):

        nll_p = log( exp(o_t) + sum_{s: keep} exp(o_{j_s} - log(S q_{j_s})) ) - o_t

    The sum is an importance-sampling estimate of sum_{j != t, allowed} exp(o_j), unbiased for
    any q > 0 (log-Q correction: Bengio & Senecal 2008, Jean et al. 2015), so exp(nll) is an
    unbiased estimate of 1 / p_full(t); nll itself is biased low by Jensen and consistent
    as S grows. With every item a negative exactly once and ``log_correction`` 0 it is the
    full softmax's NLL exactly.
    """
    corrected = (neg_logits.float() - log_correction.float()).masked_fill(~keep, float("-inf"))
    pos = pos_logit.float()
    return torch.logsumexp(torch.cat([pos[:, None], corrected], dim=1), dim=1) - pos


def rating_mse(pred: Tensor, target: Tensor) -> tuple[Tensor, Stats]:
    """Rating regression head: L = mean_b (pred_b - target_b)^2."""
    sq_err = (pred - target.to(pred.dtype)) ** 2  # (B,)
    loss = sq_err.mean()
    return loss, {"mse": float(loss.detach()), "rmse": math.sqrt(float(loss.detach()))}


def bradley_terry(chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Stats]:
    """Pairwise reward-model loss (PageLLM; Bradley & Terry 1952).

    L = -mean_b log sigma(r_c,b - r_r,b); e.g. r_c=1, r_r=0 -> log(1 + e^-1).
    """
    margin = chosen - rejected  # (B,)
    loss = -F.logsigmoid(margin).mean()
    return loss, {
        "loss": float(loss.detach()),
        "accuracy": _f((margin > 0).float()),
        "margin": _f(margin),
        "chosen_reward": _f(chosen),
        "rejected_reward": _f(rejected),
    }


# --------------------------------------------------------------------------- PPO


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
) -> tuple[Tensor, Stats]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss.

    rho = exp(log pi - log pi_old)
    L = masked_mean( max(-A rho, -A clip(rho, 1-eps, 1+eps)) )

    ``clipfrac`` is the fraction of tokens where the clipped branch is the one
    taken (there the gradient is zero), as in TRL; a ratio outside [1-eps, 1+eps]
    that is not binding (e.g. rho < 1-eps with A > 0) does not count.
    ``approx_kl`` is the k3 estimator of KL(pi_old || pi): (rho - 1) - log rho.
    """
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)
    surr_unclipped = -advantages * ratio  # (B, T)
    surr_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.max(surr_unclipped, surr_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((surr_clipped > surr_unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
        ratio_mean = masked_mean(ratio, mask)
    return loss, {
        "policy_loss": float(loss.detach()),
        "clipfrac": float(clipfrac),
        "approx_kl": float(approx_kl),
        "ratio_mean": float(ratio_mean),
    }


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
) -> tuple[Tensor, Stats]:
    """Clipped value loss (PPO2 / OpenAI baselines).

    v_clip = v_old + clip(v - v_old, -eps, eps)
    L = 0.5 * masked_mean( max((v - R)^2, (v_clip - R)^2) )
    ``vf_clipfrac``: fraction of tokens where the clipped term is strictly larger.
    """
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    err_unclipped = (values - returns) ** 2  # (B, T)
    err_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        vf_clipfrac = masked_mean((err_clipped > err_unclipped).float(), mask)
    return loss, {
        "value_loss": float(loss.detach()),
        "vf_clipfrac": float(vf_clipfrac),
        "value_mean": float(masked_mean(values.detach(), mask)),
    }


def entropy_from_logits(logits: Tensor, mask: Tensor, allowed: Tensor | None = None) -> Tensor:
    """Masked mean entropy of softmax(logits), a scalar tensor.

    H_t = -sum_v p_v log p_v, p = softmax(logits restricted to ``allowed``).
    ``allowed`` (V,) bool limits the distribution to item tokens (a page holds
    items only); disallowed entries have p = 0 and contribute nothing.
    """
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))  # (B, T, V)
    logp = torch.log_softmax(logits, dim=-1)
    if allowed is not None:
        logp = logp.masked_fill(~allowed, 0.0)  # avoid 0 * -inf = nan
    entropy = -(logp.exp() * logp).sum(-1)  # (B, T)
    return masked_mean(entropy, mask)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi, shape (B, T).

    With log r = log pi - log pi_ref (Schulman, "Approximating KL divergence"):
      k1 = log r                                  (unbiased, can be negative)
      k2 = 0.5 (log r)^2                          (low variance, biased)
      k3 = exp(-log r) - 1 + log r
         = exp(ref - logp) - 1 - (ref - logp)      (unbiased, >= 0)
    All are 0 where logprobs == ref_logprobs.
    """
    log_ratio = logprobs - ref_logprobs  # (B, T)
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"kl kind must be 'k1', 'k2' or 'k3', got {kind!r}")


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

    delta_t = r_t + gamma V_{t+1} - V_t
    A_t     = delta_t + gamma lam A_{t+1}
    returns = A + V
    Rows are right-padded: the value after the last valid token is 0, and padded
    positions get advantage and return 0. Returns (advantages, returns), (B, T).
    """
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m  # padded tokens contribute nothing
    seq_len = rewards.size(1)
    advantages = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(seq_len)):
        next_value = values[:, t + 1] if t + 1 < seq_len else torch.zeros_like(next_adv)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        advantages[:, t] = next_adv
    returns = (advantages + values) * m
    return advantages, returns


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Masked whitening: (x - mu) / sqrt(var + eps) over tokens with mask 1.

    mu, var are the masked mean and population (biased) variance. With
    ``shift_mean=False`` the mean is added back (scale only). Padded positions -> 0.
    """
    m = mask.to(x.dtype)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * m


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, sec. 2.2).

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)
    beta_{t+1} = beta_t (1 + e_t * n_steps / horizon)
    KL above target -> beta grows; below -> beta shrinks.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if init_kl_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                f"need init_kl_coef >= 0, target > 0, horizon > 0; got {init_kl_coef}, {target}, {horizon}"
            )
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = int(state.get("horizon", self.horizon))


class FixedKLController:
    """Constant KL coefficient with the same interface as AdaptiveKLController."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


# --------------------------------------------------------------------------- LPO4Rec


def _listwise_stats(s_pos: Tensor, s_neg: Tensor, loss: Tensor) -> Stats:
    """Diagnostics shared by the listwise losses: loss, pos_margin, accuracy."""
    with torch.no_grad():
        return {
            "loss": float(loss.detach()),
            "pos_margin": _f(s_pos - s_neg.mean(dim=1)),
            "accuracy": _f((s_pos > s_neg.max(dim=1).values).float()),
        }


def lpo_softmax(
    s_pos: Tensor,
    s_neg: Tensor,
    beta: float = 1.0,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> tuple[Tensor, Stats]:
    """Listwise preference loss (LPO4Rec; Plackett-Luce top-1 / listwise Bradley-Terry).

    L_b = -log( exp(beta s+) / (exp(beta s+) + sum_j exp(beta s-_j)) )
        = logsumexp(beta [s+, s-_1..N]) - beta s+
    i.e. the negative log-likelihood that the positive ranks first. (LPO4Rec's
    public code adds the probability itself to the loss; we use the NLL the
    paper derives.) Falls as s+ rises, rises as any s-_j rises.

    s_pos (B,), s_neg (B, N), weights (B,) optional. Reduction (see _reduce):
    "mean" = sum_b w_b L_b / sum_b w_b; "none" = w_b L_b per example, so a trainer
    can form sum_b w_b (CE_b + lambda LPO_b) by passing weights=None here.
    """
    logits = beta * torch.cat([s_pos.unsqueeze(1), s_neg], dim=1)  # (B, 1+N)
    per_example = torch.logsumexp(logits, dim=1) - logits[:, 0]  # (B,)
    loss = _reduce(per_example, weights, reduction)
    stats = _listwise_stats(s_pos, s_neg, loss.mean())
    stats["pos_prob"] = _f(torch.exp(-per_example))
    return loss, stats


def lpo_sigmoid(
    s_pos: Tensor,
    s_neg: Tensor,
    beta: float = 1.0,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> tuple[Tensor, Stats]:
    """Product-of-sigmoids ablation of LPO: N independent pairwise BT terms.

    L_b = -sum_j log sigma(beta (s+ - s-_j))     (sum over negatives, as written;
    it grows with N, unlike the softmax form). Reduction as in ``lpo_softmax``.
    """
    pair_margin = beta * (s_pos.unsqueeze(1) - s_neg)  # (B, N)
    per_example = -F.logsigmoid(pair_margin).sum(dim=1)  # (B,)
    loss = _reduce(per_example, weights, reduction)
    stats = _listwise_stats(s_pos, s_neg, loss.mean())
    stats["pair_accuracy"] = _f((pair_margin > 0).float())
    return loss, stats


def dpo(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
    reduction: str = "mean",
) -> tuple[Tensor, Stats]:
    """Direct preference optimisation (Rafailov et al. 2023, eq. 7).

    r = log pi_theta - log pi_ref  (sequence log-probs, (B,))
    L = -log sigma( beta ((r_c) - (r_r)) )
    ``reward_margin`` = beta (r_c - r_r); ``accuracy`` = fraction with margin > 0.
    """
    r_chosen = pi_chosen - ref_chosen  # (B,)
    r_rejected = pi_rejected - ref_rejected
    logits = beta * (r_chosen - r_rejected)  # (B,)
    per_example = -F.logsigmoid(logits)
    loss = _reduce(per_example, None, reduction)
    return loss, {
        "loss": _f(loss),
        "reward_margin": _f(logits),
        "accuracy": _f((logits > 0).float()),
        "chosen_reward": _f(beta * r_chosen),
        "rejected_reward": _f(beta * r_rejected),
    }


def sdpo(
    pi_pos: Tensor,
    pi_neg: Tensor,
    ref_pos: Tensor,
    ref_neg: Tensor,
    beta: float = 0.1,
    reduction: str = "mean",
) -> tuple[Tensor, Stats]:
    """Softmax DPO with N negatives (S-DPO, Chen et al. 2024, eq. 10).

    r = log pi_theta - log pi_ref;  pi_pos/ref_pos (B,), pi_neg/ref_neg (B, N)
    L = -log sigma( -log sum_k exp(beta (r-_k - r+)) )
    With N = 1 this is exactly ``dpo``.
    """
    r_pos = pi_pos - ref_pos  # (B,)
    r_neg = pi_neg - ref_neg  # (B, N)
    log_sum = torch.logsumexp(beta * (r_neg - r_pos.unsqueeze(1)), dim=1)  # (B,)
    logits = -log_sum
    per_example = -F.logsigmoid(logits)
    loss = _reduce(per_example, None, reduction)
    return loss, {
        "loss": _f(loss),
        "reward_margin": _f(beta * (r_pos - r_neg.mean(dim=1))),
        "accuracy": _f((r_pos > r_neg.max(dim=1).values).float()),
    }


@torch.no_grad()
def tail_reweight(is_tail_target: Tensor, strength: float, losses: Tensor | None = None) -> Tensor:
    """Adaptive per-example weights (LPO4Rec), favouring tail targets, shape (B,).

    z_b      = (l_b - mean(l)) / (std(l) + 1e-8)   (population std; detached;
                                                     only when ``losses`` given)
    logits_b = strength * (1[target_b is tail] + z_b)
    w_b      = B * softmax(logits)_b
    so mean_b w_b = 1; strength 0 gives all ones; strength > 0 gives tail
    examples (and, with losses, harder examples) more weight.
    """
    logits = is_tail_target.float()  # (B,)
    if losses is not None:
        losses = losses.detach().float()
        z = (losses - losses.mean()) / (losses.std(unbiased=False) + 1e-8)
        logits = logits + z
    batch = logits.numel()
    return batch * torch.softmax(strength * logits, dim=0)
