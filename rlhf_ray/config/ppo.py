"""PPO (PageLLM) on Ray actors: one config for the controller, a sub-config per role.

Each role actor receives only its own sub-config (and the shared prompt), never the whole
:class:`PPOConfig`.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

from rlhf_ray.config.base import doc, require
from rlhf_ray.config.common import ActorResources, PromptConfig, TrainConfig

#: validation metrics ``ppo.select: best`` can maximise (the PPO targets' and the ranking's)
SELECT_METRICS = ("page_ndcg@10", "page_recall@10", "ndcg@10", "recall@20", "page_ild", "tail_recall@20")


def _ppo_train(lr: float) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=32, lr=lr, warmup_ratio=0.0, patience=0, tensorboard=False,
                       progress=False)


@dataclass
class _TrainedRole(ActorResources):
    ranks: int = field(default=1, metadata=doc("actors in the group (one torch.distributed rank each)", ge=1))

    def validate(self) -> None:
        require(self.train.batch_size % self.ranks == 0, "train.batch_size",
                f"{self.train.batch_size} is not divisible by ranks={self.ranks} (every rank takes an equal shard)")
        require(not self.train.ema_decay, "train.ema_decay",
                "is not read by PPO's actors (PPO selects among its validated iterations with ppo.select); set it to 0")


@dataclass
class PPOPolicyConfig(_TrainedRole):
    """The trained policy: a group of ``ranks`` PolicyActors sharing one DeepSpeed/torch engine setup.

    Only the engine fields of ``train`` are read (lr, weight_decay, warmup_ratio, grad_clip,
    zero_stage, offload, dtype, device); ``train.batch_size`` is the PPO minibatch (global,
    split evenly across ranks).
    """

    clip_eps: float = field(default=0.2, metadata=doc("PPO ratio clip epsilon", gt=0))
    entropy_coef: float = field(default=0.0, metadata=doc("entropy bonus weight: loss -= coef * H(pi)", ge=0))
    ptx_coef: float = field(default=0.0, metadata=doc(
        "PPO-ptx (InstructGPT's mix of the pre-training loss into PPO): loss += coef * SFT's next-item "
        "cross-entropy over the items of the rollout prompts' histories, so PPO keeps the full ranking SFT "
        "learned (0 = off)", ge=0, legacy=0.0))
    ptx_page_coef: float = field(default=0.0, metadata=doc(
        "PPO-ptx's page term: loss += coef * SFT's page loss (L_rank) on the page SFT teaches for each rollout "
        "prompt, the training positives it holds out (ppo.holdout > 0; SFT's page_order). It trains the <page> "
        "position, where the full ranking is read and which ptx_coef's next-item term never reaches "
        "(0 = off)", ge=0, legacy=0.0))
    ptx_page_slots: int = field(default=0, metadata=doc(
        "ptx_page_coef's loss over the page's first N slots only (0 = every slot, as SFT trains it; 1 = the "
        "<page> position alone, the full ranking, leaving how later slots follow to PPO)", ge=0, legacy=0))
    train: TrainConfig = field(default_factory=lambda: _ppo_train(1e-5), metadata=doc("policy engine"))


@dataclass
class PPOCriticConfig(_TrainedRole):
    """The value model: SFT backbone + value head, a group of ``ranks`` CriticActors."""

    value_clip: float = field(default=0.2, metadata=doc("clip of the value update around the rollout values", gt=0))
    train: TrainConfig = field(default_factory=lambda: _ppo_train(1e-4), metadata=doc("critic engine"))


@dataclass
class PPORolloutConfig(ActorResources):
    """Inference copies of the policy that write the training pages (sampling, seeded)."""

    actors: int = field(default=1, metadata=doc("rollout actors; the batch's users are split across them", ge=1))
    temperature: float = field(default=1.0, metadata=doc("sampling temperature", gt=0))
    top_k: int = field(default=0, metadata=doc("sample among the k most likely items (0 = all)", ge=0))
    shortlist: int = field(default=0, metadata=doc(
        "sample each page among the M items its first slot scores highest (GenerationConfig.shortlist; "
        "0 = the whole catalogue): the policy, the reference's KL and PPO's validation pages then all use "
        "the distribution restricted to each rollout's shortlist", ge=0, legacy=0))


@dataclass
class PPOReferenceConfig(ActorResources):
    """The frozen SFT policy that anchors the KL penalty."""


@dataclass
class PPORewardConfig(ActorResources):
    """The reward actor: a trained mixed-grained reward checkpoint or the rule-based reward."""

    alpha: float | None = field(default=None, metadata=doc(
        "reward mix ratio R = alpha * page + (1 - alpha) * mean item reward (default: the checkpoint's)",
        ge=0.0, le=1.0))
    hit_weight: float = field(default=0.0, metadata=doc(
        "adds hit_weight per page item that is one of the user's training positives the prompt held out "
        "(see holdout) to that slot's reward: a reward grounded in what the user went on to like, beside the "
        "reward model's (0 = the model's alone)", ge=0.0))
    diversity_weight: float = field(default=0.0, metadata=doc(
        "adds diversity_weight * H_cat(page) / ln K' (the page's category entropy, 1 = spread evenly) to the "
        "page reward, beside the reward model's (0 = off)", ge=0.0, legacy=0.0))
    diversity_credit: typing.Literal["page", "slot"] = field(default="page", metadata=doc(
        "where the category-entropy term is paid: page (at the page's end, as a page-level reward) or slot "
        "(each slot the entropy it adds; the same total, credited where it is earned)", legacy="page"))
    clip: float = field(default=0.0, metadata=doc(
        "reward clipping: clamp the reward model's normalised page score and item rewards to [-clip, clip] "
        "(in standard deviations of its training pages) before the mix (0 = off)", ge=0.0, legacy=0.0))
    members: list[str] = field(default_factory=list, metadata=doc(
        "more reward checkpoints (the same pairs, other training seeds: rlhf-ray reward --pairs-file P "
        "--train.seed N) scored beside the main one; the model reward is then the ensemble's mean "
        "(rlhf_ray.rewards.EnsembleReward)", legacy=[], path=True))
    model_weight: float = field(default=1.0, metadata=doc(
        "weight of the reward model's score (its mix, or the ensemble's) in PPO's reward beside hit_weight and "
        "diversity_weight; 0 = the grounded terms alone, the ablation that asks what the learned model adds",
        ge=0.0, legacy=1.0))
    uncertainty_coef: float = field(default=0.0, metadata=doc(
        "ensemble uncertainty penalty: the model reward is mean - uncertainty_coef * std over the main "
        "checkpoint and members, per page and per slot (needs members; 0 = the plain mean)", ge=0.0, legacy=0.0))

    def validate(self) -> None:
        require(self.uncertainty_coef == 0 or self.members, "uncertainty_coef",
                "penalises the spread of an ensemble: list the other reward checkpoints in reward.members")
        require(self.model_weight > 0 or self.hit_weight > 0 or self.diversity_weight > 0, "model_weight",
                "0 leaves PPO no reward at all: keep the model or set hit_weight / diversity_weight")


@dataclass
class PPOConfig(PromptConfig):
    """PPO (PageLLM) on Ray actors: rollouts, mixed-grained reward, KL to the SFT reference, GAE.

    Per iteration: B = rollout_batch_size users -> pages (K = page_size slots); token reward
    r_t = c_item * item_t + 1[t = last] * c_page * page - kl_coef * KL_t (mixed reward:
    c_item = (1 - alpha) / K, c_page = alpha); GAE(gamma, lam); ppo_epochs passes of minibatches.
    """

    policy: PPOPolicyConfig = field(default_factory=PPOPolicyConfig, metadata=doc("policy group"))
    critic: PPOCriticConfig = field(default_factory=PPOCriticConfig, metadata=doc("critic group"))
    rollout: PPORolloutConfig = field(default_factory=PPORolloutConfig, metadata=doc("rollout actors"))
    reference: PPOReferenceConfig = field(default_factory=PPOReferenceConfig, metadata=doc("reference actor"))
    reward: PPORewardConfig = field(default_factory=PPORewardConfig, metadata=doc("reward actor"))
    iterations: int = field(default=20, metadata=doc("PPO iterations (rollout + update)", ge=1))
    holdout: int = field(default=0, metadata=doc(
        "rollout prompts end this many interactions before the end of the user's training range (at least "
        "one history item is kept); the held-out training positives are what reward.hit_weight pays for. "
        "Never the validation or test targets", ge=0))
    rollout_batch_size: int = field(default=64, metadata=doc("users (pages) generated per iteration", ge=1))
    ppo_epochs: int = field(default=2, metadata=doc("passes over each iteration's experience", ge=1))
    gamma: float = field(default=1.0, metadata=doc("discount over page slots", gt=0.0, le=1.0))
    lam: float = field(default=0.95, metadata=doc("GAE lambda", ge=0.0, le=1.0))
    kl_coef: float = field(default=0.05, metadata=doc("KL penalty coefficient (initial value if adaptive)", ge=0))
    adaptive_kl: bool = field(default=False, metadata=doc("adapt kl_coef towards kl_target (Ziegler et al.)"))
    kl_target: float = field(default=0.1, metadata=doc("adaptive KL: target mean per-page KL", gt=0))
    kl_horizon: int = field(default=10000, metadata=doc("adaptive KL: horizon in pages", ge=1))
    kl_estimator: typing.Literal["k1", "k2", "k3"] = field(default="k1", metadata=doc(
        "per-slot KL estimator: k1 | k2 | k3"))
    whiten_advantages: bool = field(default=True, metadata=doc("whiten advantages over the batch"))
    seed: int = field(default=0, metadata=doc("seed: data order, rollout sampling, minibatch order, heads"))
    eval_every: int = field(default=5, metadata=doc("validate every N iterations (0 = never)", ge=0))
    eval_users: int = field(default=200, metadata=doc("validate on at most N users (0 = all)", ge=0))
    save_every: int = field(default=5, metadata=doc(
        "write a resumable state every N iterations (0 = only at the end)", ge=0))
    keep_states: int = field(default=2, metadata=doc("resumable states kept under OUT.state (oldest removed)", ge=1))
    max_restarts: int = field(default=3, metadata=doc(
        "an actor or node lost mid-run: restart its role and continue from the last saved state, at most "
        "this many times per run (0 = stop with the error)", ge=0))
    hack_threshold: float = field(default=0.05, metadata=doc(
        "reward-hacking monitor: flag when reward rose while validation NDCG@10 or ILD fell by more "
        "than this fraction of its first value and the paired 95% interval of the fall over the "
        "validation users excludes 0", ge=0))
    hack_stop: bool = field(default=False, metadata=doc(
        "stop the run when the reward-hacking monitor flags, and export the policy of the last validation "
        "it did not flag (with select=best: the best such validation), not the flagged one"))
    select: typing.Literal["last", "best"] = field(default="last", metadata=doc(
        "the policy exported: last (the final weights) | best (the validation with the highest "
        "select_metric among those the reward-hacking monitor did not flag, the SFT start included; "
        "needs eval_every > 0)", legacy="last"))
    select_metric: typing.Literal[SELECT_METRICS] = field(default="page_ndcg@10", metadata=doc(
        "select=best: the validation metric maximised: " + " | ".join(SELECT_METRICS), legacy="page_ndcg@10"))
    colocate: bool = field(default=True, metadata=doc(
        "all roles share one placement group (fractional CPUs/GPUs per actor); false: one group per role"))
    strategy: typing.Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = field(default="PACK", metadata=doc(
        "placement strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD"))
    tensorboard: bool = field(default=True, metadata=doc("write TensorBoard events beside the output dir",
                                                         cosmetic=True))

    def validate(self) -> None:
        require(self.select == "last" or self.eval_every > 0, "select",
                "select=best chooses among validations: set eval_every > 0")
        require(self.policy.ptx_page_coef == 0 or self.holdout > 0, "policy.ptx_page_coef",
                "teaches the page of the training positives the rollout prompts hold out: set holdout > 0")
        require(self.rollout.shortlist == 0 or self.rollout.shortlist >= self.page_size, "rollout.shortlist",
                f"must be 0 or at least page_size={self.page_size}, got {self.rollout.shortlist}")
        for role in ("policy", "critic"):
            mb = getattr(self, role).train.batch_size
            require(self.rollout_batch_size % mb == 0, f"{role}.train.batch_size",
                    f"minibatch {mb} does not divide rollout_batch_size={self.rollout_batch_size}")

    def total_steps(self, role: "PPOPolicyConfig | PPOCriticConfig") -> int:
        """Optimizer steps a trained role takes over the whole run."""
        return self.iterations * self.ppo_epochs * (self.rollout_batch_size // role.train.batch_size)
