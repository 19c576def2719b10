"""The reward-model stage's configs: preference-pair synthesis and the mixed-grained model."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

from rlhf_ray.config.base import Config, doc, require
from rlhf_ray.config.common import PAGE_MAX_PER_CATEGORY, PAGE_WINDOW, ModelConfig, PromptConfig, TrainConfig

PairFamily = typing.Literal["relevance", "ranking", "diversity", "redundancy"]
PAIR_FAMILIES = typing.get_args(PairFamily)


@dataclass
class PairsConfig(Config):
    """Preference pairs synthesised from implicit feedback (``rlhf-ray pairs``; the reward stage).

    Per user, from the training part only (items[:valid_start]): at a cut t the prompt is
    items[:t] and the golden (chosen) page holds the best positives of the next ``window``
    items; each family then writes one worse (rejected) page from it.
    """

    page_size: int = field(default=10, metadata=doc("K: items on a page", ge=1, le=100))
    window: int = field(default=PAGE_WINDOW, metadata=doc(
        "golden pages draw from the positives among the `window` training items after the cut "
        "(0 = up to the end of the training part)", ge=0))
    min_history: int = field(default=3, metadata=doc("a cut leaves at least this many history items", ge=1))
    min_page: int = field(default=4, metadata=doc("a cut needs at least this many positives in its window (>= 2)",
                                                  ge=2))
    cuts_per_user: int = field(default=4, metadata=doc(
        "golden pages per user (random cuts; the latest admissible cut is always one)", ge=1))
    max_per_category: int = field(default=PAGE_MAX_PER_CATEGORY, metadata=doc(
        "golden page: at most this many items of one category while other positives allow it", ge=1))
    families: list[PairFamily] = field(default_factory=lambda: list(PAIR_FAMILIES), metadata=doc(
        "rejected-page families: relevance,ranking,diversity,redundancy", nonempty=True))
    strength: float = field(default=0.5, metadata=doc(
        "perturbation strength in (0, 1]: share of the page replaced (relevance), of the page's "
        "halves swapped (ranking), of off-category items collapsed (diversity), of slots made "
        "redundant (redundancy, at most K/2)", gt=0.0, le=1.0))
    negatives: typing.Literal["random", "popular", "mixed"] = field(default="mixed", metadata=doc(
        "relevance negatives: random (uniform) | popular (p ~ training popularity) | mixed (each slot 50/50)"))
    collapse_categories: int = field(default=1, metadata=doc(
        "diversity family: collapse the page onto its 1 or 2 dominant categories", ge=1, le=2))
    repeat_fraction: float = field(default=0.0, metadata=doc(
        "redundancy family: share of injected items that are exact repeats (the rest are "
        "same-category nearest co-occurrence neighbours)", ge=0.0, le=1.0))
    valid_users: float = field(default=0.05, metadata=doc(
        "share of users whose pairs are held out for validation", gt=0.0, lt=1.0))
    test_users: float = field(default=0.1, metadata=doc(
        "share of users whose pairs are held out for evaluation", ge=0.0, lt=1.0))
    seed: int = field(default=0, metadata=doc("seed: same data + config + seed = the same pairs"))

    def validate(self) -> None:
        require(self.min_page <= self.page_size, "min_page",
                f"must be in [2, page_size={self.page_size}], got {self.min_page}")
        require(self.valid_users + self.test_users < 1.0, "test_users",
                f"valid_users + test_users must be < 1, got {self.valid_users + self.test_users}")


@dataclass
class RewardConfig(PromptConfig):
    """Mixed-grained reward model (PageLLM): R = alpha * g(page, user) + (1 - alpha) * mean_t r_t.

    Page head g reads the hidden state of an ``<eos>`` after the page; item head r_t the state
    at each page item token. Loss = page_weight * BT(g_c, g_r) + item_weight * BT(mean r_c, mean r_r).
    The prompt (``max_history``) is the one the policy is trained with, so the reward actor
    scores rollouts on the prompts the policy saw.
    """

    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc(
        "backbone (used only when starting without an SFT checkpoint)"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=1e-3, patience=2),
                               metadata=doc("optimisation"))
    pairs: PairsConfig = field(default_factory=PairsConfig, metadata=doc("preference-pair synthesis"))
    pairs_file: str | None = field(default=None, metadata=doc(
        "read pairs from this Parquet file (rlhf-ray pairs) instead of synthesising them", path=True))
    alpha: float = field(default=0.5, metadata=doc(
        "reward mix ratio: R = alpha * page score + (1 - alpha) * mean item reward (normalised heads)",
        ge=0.0, le=1.0))
    page_weight: float = field(default=1.0, metadata=doc("weight of the page-head Bradley-Terry loss", ge=0))
    item_weight: float = field(default=1.0, metadata=doc("weight of the mean-item-reward Bradley-Terry loss", ge=0))
    policy_pages: int = field(default=1, metadata=doc(
        "on-policy hard negatives: pages the policy writes for each golden page's prompt (greedy, then "
        "sampled), kept as rejected pages (family 'policy') when they miss positives the golden page holds; "
        "0 = synthetic families only", ge=0, le=16, legacy=0))
    policy_graded: int = field(default=0, metadata=doc(
        "graded on-policy pairs per golden page: two of the policy's own pages for its prompt, the one "
        "holding more of the window's positives chosen (family 'policy_graded'), so the reward also "
        "orders the policy's samples among themselves, which is what PPO's advantages compare; "
        "0 = none", ge=0, le=64, legacy=0))
    policy_temperature: float = field(default=1.0, metadata=doc(
        "sampling temperature of the on-policy pages after the first (greedy) one", gt=0, legacy=1.0))
    policy_checkpoint: str | None = field(default=None, metadata=doc(
        "policy checkpoint whose pages are the on-policy negatives (default: the checkpoint the reward "
        "model starts from, i.e. SFT; give PPO's to refresh the reward for a later round)", legacy=None,
        path=True))
    train_blocks: int = field(default=-1, metadata=doc(
        "which backbone weights the pair loss trains: -1 = all of them; n >= 0 = only the top n transformer "
        "blocks and the final layer norm, the embeddings and lower blocks keeping the starting (SFT) "
        "checkpoint's weights (0: the heads read SFT's features). Fewer trained weights over-fit a few "
        "thousand pairs less", ge=-1, legacy=-1))
    norm_pairs: int = field(default=1024, metadata=doc(
        "training pairs scored for the reward normalisation statistics (mean/std per head)", ge=1))

    def validate(self) -> None:
        require(self.policy_graded == 0 or self.policy_pages >= 2, "policy_graded",
                f"graded pairs compare the policy's pages with each other: needs policy_pages >= 2, "
                f"got policy_pages={self.policy_pages}")
        require(self.page_weight + self.item_weight > 0, "page_weight", "at least one loss weight must be > 0")
