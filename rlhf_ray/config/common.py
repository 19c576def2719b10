"""Config pieces several stages share: the backbone, optimisation, the prompt, decoding."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

from rlhf_ray.config.base import Config, doc, require

#: the good page's defaults (rlhf_ray.data.pages), shared by the pair synthesis and SFT
PAGE_WINDOW = 30
PAGE_MAX_PER_CATEGORY = 3


@dataclass
class ModelConfig(Config):
    """The policy backbone: a GPT-2 built from these sizes, or any HF causal-LM directory."""

    base_model: str | None = field(default=None, metadata=doc(
        "HF causal-LM directory with its tokenizer to start from: its own tokenizer is kept for text, the "
        "specials it lacks, item (and user) tokens are appended and the embeddings grown for them (new rows "
        "start at the mean row); the sizes, dropout and text_vocab_size below are then ignored. Default: build a "
        "GPT-2 from the sizes below", path=True))
    n_layer: int = field(default=2, metadata=doc("transformer blocks", ge=1))
    n_embd: int = field(default=128, metadata=doc("hidden size", ge=1))
    n_head: int = field(default=4, metadata=doc("attention heads (must divide n_embd)", ge=1))
    n_positions: int = field(default=128, metadata=doc("maximum sequence length", ge=1))
    dropout: float = field(default=0.1, metadata=doc("dropout on residuals, embeddings and attention",
                                                     ge=0.0, lt=1.0))
    text_vocab_size: int = field(default=1000, metadata=doc(
        "byte-level BPE size for the meta text (>= 300: 256 bytes + specials; unused with base_model)", ge=300))
    user_tokens: bool = field(default=False, metadata=doc("give every user a token (prepended to the prompt)"))
    lora: bool = field(default=False, metadata=doc("train LoRA adapters (peft) instead of all weights"))
    lora_r: int = field(default=8, metadata=doc("LoRA rank", ge=1))
    lora_alpha: int = field(default=16, metadata=doc("LoRA scaling alpha"))
    lora_dropout: float = field(default=0.05, metadata=doc("LoRA dropout"))

    def validate(self) -> None:
        require(self.n_embd % self.n_head == 0, "n_head", f"{self.n_head} does not divide n_embd={self.n_embd}")


@dataclass
class TrainConfig(Config):
    """Optimisation, parallelism and bookkeeping shared by every training stage."""

    epochs: int = field(default=10, metadata=doc("passes over the training data", ge=1))
    max_steps: int = field(default=0, metadata=doc("stop after this many optimizer steps (0 = no limit)", ge=0))
    batch_size: int = field(default=64, metadata=doc("global batch size (split across workers)", ge=1))
    lr: float = field(default=1e-3, metadata=doc("peak learning rate (AdamW)", gt=0))
    weight_decay: float = field(default=0.01, metadata=doc("AdamW weight decay"))
    warmup_ratio: float = field(default=0.05, metadata=doc(
        "linear warm-up fraction of total steps, then cosine", ge=0.0, lt=1.0))
    grad_clip: float = field(default=1.0, metadata=doc("clip the global gradient norm (0 = off)"))
    seed: int = field(default=0, metadata=doc("random seed (data order, init, dropout)"))
    eval_every: int = field(default=1, metadata=doc("validate every N epochs", ge=1))
    patience: int = field(default=3, metadata=doc(
        "early stop after N validations without improvement (0 = off)", ge=0))
    eval_users: int = field(default=0, metadata=doc("validate on at most N users (0 = all)", ge=0))
    num_workers: int = field(default=0, metadata=doc("Ray Train workers (0 = run in this process without Ray)", ge=0))
    zero_stage: int = field(default=0, metadata=doc("DeepSpeed ZeRO stage 0-3 (0 = plain DDP / torch)", ge=0, le=3))
    offload: bool = field(default=False, metadata=doc("ZeRO-3 CPU offload of parameters and optimizer state"))
    dtype: typing.Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata=doc(
        "fp32 | bf16 | fp16 (fp16 needs a GPU)"))
    device: typing.Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=doc("auto | cpu | cuda"))
    cpus_per_worker: float = field(default=1.0, metadata=doc("CPUs reserved per Ray Train worker", gt=0))
    placement_strategy: typing.Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = field(
        default="PACK", metadata=doc("Ray Train workers across nodes: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD "
                                     "(one worker per node)"))
    ema_decay: float = field(default=0.0, metadata=doc(
        "validate and export an exponential moving average of the weights with this per-step decay (0 = off, "
        "the trained weights); the decay warms up as min(d, (1+n)/(10+n)) after n steps, so 0.99 binds from "
        "step 890 on (rlhf_ray.stages.averaging); one fp32 copy of the weights per rank; not with zero_stage "
        "3, whose ranks hold slices of each weight",
        ge=0.0, lt=1.0, legacy=0.0))
    max_failures: int = field(default=0, metadata=doc(
        "Ray Train: start the worker group again after this many failures (a worker or its node lost; "
        "-1 = no limit)", ge=-1))
    tensorboard: bool = field(default=True, metadata=doc("write TensorBoard events beside the output dir",
                                                         cosmetic=True))
    progress: bool = field(default=True, metadata=doc("show progress bars", cosmetic=True))

    def validate(self) -> None:
        require(not self.offload or self.zero_stage == 3, "offload", "needs zero_stage 3")
        require(not self.ema_decay or self.zero_stage < 3, "ema_decay", "needs zero_stage 0-2 (every rank keeps "
                "the full average; ZeRO-3 partitions the weights)")


@dataclass
class PromptConfig(Config):
    """How a user's history becomes a prompt and how long the page after it is: one declaration
    for every stage, decoder and server (``<bos> [<user>] <hist> h_1..h_L <page>``, then K items).

    SFT, reward, PPO (rollout, reference, policy, critic), LPO and evaluation configs inherit
    these fields (same YAML keys and flags in every section); a pipeline's ``prompt:`` section
    sets them for all of its stages at once (a section may keep its own page size, never its
    own history length), and every checkpoint records the prompt it was trained with
    (``manifest["prompt"]``), which Serve uses.
    Stages that score the first slot only (LPO) or given pages (reward) read ``max_history``.
    """

    max_history: int = field(default=50, metadata=doc("most recent history items in a prompt", ge=1))
    page_size: int = field(default=10, metadata=doc("K: items on a page", ge=1, le=100))
    exclude_seen: bool = field(default=True, metadata=doc("never put an item of the user's history on the page"))

    @property
    def prompt(self) -> "PromptConfig":
        """Just the prompt fields (of a stage config that inherits them)."""
        return PromptConfig(self.max_history, self.page_size, self.exclude_seen)


@dataclass
class GenerationConfig(PromptConfig):
    """Constrained page decoding, shared by evaluation, rollouts and serving."""

    strategy: typing.Literal["greedy", "sample", "beam"] = field(default="greedy", metadata=doc(
        "greedy | sample | beam"))
    temperature: float = field(default=1.0, metadata=doc("sampling temperature", gt=0))
    top_k: int = field(default=0, metadata=doc("sample among the k most likely items (0 = all)", ge=0))
    num_beams: int = field(default=4, metadata=doc("beams for strategy=beam", ge=1))
    shortlist: int = field(default=0, metadata=doc(
        "decode each page among the M allowed items its first slot scores highest (0 = the whole "
        "catalogue): slots after the first then score M items instead of every item, which pays from "
        "about 10k items on; a page can differ from whole-catalogue decoding only where a later slot's "
        "best item lies outside the first slot's top M. The full ranking is unchanged", ge=0))

    def validate(self) -> None:
        require(self.shortlist == 0 or self.shortlist >= self.page_size, "shortlist",
                f"must be 0 or at least page_size={self.page_size}, got {self.shortlist}")


@dataclass
class ActorResources(Config):
    """Ray resources of one actor of a PPO role (fractional values share a bundle / a GPU)."""

    num_cpus: float = field(default=0.25, metadata=doc("Ray CPUs per actor (fractional shares a bundle)", ge=0))
    num_gpus: float = field(default=0.0, metadata=doc("Ray GPUs per actor (fractional shares a GPU)", ge=0))
    resources: dict[str, float] = field(default_factory=dict, metadata=doc(
        "custom Ray resources per actor (YAML mapping or name=amount,...): puts the role on nodes that "
        "declare them, e.g. {big_mem: 1} with `ray start --resources '{\"big_mem\": 1}'` on those nodes"))
