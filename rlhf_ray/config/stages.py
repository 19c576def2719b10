"""The supervised stages' configs: pretrain, SFT, LPO (and the reward model in :mod:`.reward_model`)."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

from rlhf_ray.config.base import Config, doc, require
from rlhf_ray.config.common import PAGE_MAX_PER_CATEGORY, PAGE_WINDOW, ModelConfig, PromptConfig, TrainConfig


@dataclass
class PretrainConfig(Config):
    """Stage 1: rating prediction + next-token prediction on item meta text."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc("backbone"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, patience=0), metadata=doc("optimisation"))
    rating_weight: float = field(default=1.0, metadata=doc("weight of L_rating (history -> item rating MSE)", ge=0))
    text_weight: float = field(default=1.0, metadata=doc("weight of L_next on the meta text", ge=0))
    max_history: int = field(default=20, metadata=doc(
        "history items in a rating-prediction prompt (<hist> h_1..h_L <sep> item: not a page prompt)", ge=1))

    def validate(self) -> None:
        require(self.rating_weight + self.text_weight > 0, "rating_weight", "at least one loss weight must be > 0")


@dataclass
class SFTConfig(PromptConfig):
    """Stage 2: ground-truth ranked pages (L_rank) + next-item prediction on every prefix."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc(
        "backbone (used only when starting without a pre-trained checkpoint)"))
    train: TrainConfig = field(default_factory=TrainConfig, metadata=doc("optimisation"))
    window_stride: int = field(default=10, metadata=doc(
        "next-item training slides a max_history window over each user's sequence with this stride", ge=1))
    page_cuts: int = field(default=4, metadata=doc("ranked-page examples per user (cut points in the history)", ge=0))
    page_order: typing.Literal["time", "ground_truth"] = field(default="time", metadata=doc(
        "page targets: time (the next K positives in time order) | ground_truth (rlhf_ray.data.pages: the "
        "positives of the next page_window interactions by rating, then recency, at most max_per_category "
        "per category; the reward model's chosen pages)", legacy="time"))
    page_window: int = field(default=PAGE_WINDOW, metadata=doc(
        "ground_truth pages draw from the positives among this many interactions after the cut (0 = all)", ge=0, legacy=PAGE_WINDOW))
    max_per_category: int = field(default=PAGE_MAX_PER_CATEGORY, metadata=doc(
        "ground_truth pages: at most this many items of one category while other positives allow it", ge=1, legacy=PAGE_MAX_PER_CATEGORY))
    rank_weight: float = field(default=1.0, metadata=doc(
        "weight of L_rank on page tokens (the shipped config: 0.25). The full ranking is read at the <page> "
        "token, which only this loss trains: 0 leaves it untrained", ge=0.0))
    next_weight: float = field(default=1.0, metadata=doc("weight of next-item loss on history prefixes", ge=0.0))
    label_smoothing: float = field(default=0.0, metadata=doc(
        "label smoothing of the next-item loss: eps of the target mass spread over every item (0 = off)",
        ge=0.0, lt=1.0, legacy=0.0))
    sampled_softmax: int = field(default=0, metadata=doc(
        "training losses over sampled items: 0 = full softmax over the catalogue; N > 0 = each target "
        "is scored against N negatives drawn with replacement once per step for the whole batch, with "
        "a log-Q correction (both losses; seen and earlier page items still excluded). Validation and "
        "evaluation always rank the full catalogue", ge=0, legacy=0))
    sampled_softmax_sampler: typing.Literal["popularity", "uniform"] = field(default="popularity", metadata=doc(
        "q of the sampled negatives: popularity (training interactions + 1) | uniform", legacy="popularity"))

    def validate(self) -> None:
        require(self.rank_weight + self.next_weight > 0, "rank_weight", "at least one loss weight must be > 0")
        require(not (self.sampled_softmax and self.train.zero_stage == 3), "sampled_softmax",
                "reads the output projection's item rows directly, which ZeRO-3 partitions; "
                "use train.zero_stage 0-2 or sampled_softmax 0")
        require(not (self.sampled_softmax and self.label_smoothing), "label_smoothing",
                "spreads mass over every item, which a sampled softmax never scores; use sampled_softmax 0")


LPOLoss = typing.Literal["lpo", "lpo_sigmoid", "dpo", "sdpo"]
LPOSampler = typing.Literal["gumbel", "uniform", "popularity", "in_batch"]
LPO_LOSSES = typing.get_args(LPOLoss)
LPO_SAMPLERS = typing.get_args(LPOSampler)


@dataclass
class LPOConfig(PromptConfig):
    """LPO4Rec listwise alignment from an SFT checkpoint (DPO / S-DPO as baselines).

    Per example (history -> next positive item, positive s+ vs. N sampled negatives s-):
    L = (1/B) sum_b w_b (ce_weight * CE_b + lpo_weight * LPO_b),  w = tail_reweight(tail target).
    The policy (architecture included) always comes from the ``--sft`` checkpoint.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=1e-4, patience=2),
                               metadata=doc("optimisation"))
    loss: LPOLoss = field(default="lpo", metadata=doc(
        "lpo (softmax over 1 positive + N negatives) | lpo_sigmoid (N pairwise terms) | "
        "dpo (1 negative, frozen reference) | sdpo (N negatives, frozen reference)"))
    beta: float = field(default=1.0, metadata=doc("inverse temperature on the scores inside the preference loss",
                                                  gt=0))
    n_negatives: int = field(default=16, metadata=doc("N: negatives per example (dpo always uses 1)", ge=1))
    sampler: LPOSampler = field(default="gumbel", metadata=doc(
        "gumbel (Gumbel-top-k on the policy's scores / tau: hard negatives) | uniform | "
        "popularity (p ~ training popularity) | in_batch (other examples' positives)"))
    tau: float = field(default=1.0, metadata=doc(
        "Gumbel temperature: low = the highest-scoring (hardest) negatives, high = near uniform", gt=0))
    pool: typing.Literal["all", "head", "tail"] = field(default="head", metadata=doc(
        "items negatives are drawn from: all | head (LPO4Rec: push popular items below the positive) | tail"))
    reweight_strength: float = field(default=1.0, metadata=doc(
        "adaptive reweighting towards tail-target examples: w = B softmax(strength * 1[tail]) (0 = uniform)", ge=0))
    reweight: typing.Literal["static", "adaptive"] = field(default="static", metadata=doc(
        "static: w = B softmax(strength * 1[tail]) | adaptive (LPO4Rec): w = B softmax(strength * (1[tail] + z)), "
        "z = the example's standardised (detached) loss in the batch, so hard examples weigh more too", legacy="static"))
    reweight_on: typing.Literal["both", "preference"] = field(default="both", metadata=doc(
        "what the tail weights w_b multiply: both (CE and the preference term, LPO4Rec) | preference (CE stays "
        "uniform over examples, so the next-item fit is not skewed; only the listwise term leans to the tail)",
        legacy="both"))
    lpo_weight: float = field(default=1.0, metadata=doc("lambda: weight of the preference loss", ge=0))
    ce_weight: float = field(default=1.0, metadata=doc("weight of the positive's cross-entropy -log pi(pos)", ge=0))
    reference: bool = field(default=False, metadata=doc(
        "lpo/lpo_sigmoid: score s = log pi - log pi_ref with a frozen copy of the SFT policy "
        "(dpo and sdpo always use the reference)"))
    examples_per_user: int = field(default=4, metadata=doc(
        "(history prefix -> next positive) examples per user and epoch; the newest is always one", ge=1))

    def validate(self) -> None:
        require(self.lpo_weight + self.ce_weight > 0, "lpo_weight", "at least one loss weight must be > 0")

    @property
    def uses_reference(self) -> bool:
        """A frozen reference policy is needed (dpo/sdpo, or reference scoring)."""
        return self.reference or self.loss in ("dpo", "sdpo")

    @property
    def negatives(self) -> int:
        """Negatives drawn per example: 1 for dpo, else n_negatives."""
        return 1 if self.loss == "dpo" else self.n_negatives
