"""Typed configuration: one dataclass per stage, every field documented.

The same dataclasses drive YAML files and the command line: each field's
``metadata["help"]`` becomes its ``--flag`` help text, and ``__post_init__``
validates values so a bad setting fails before any work starts, naming the
field and (when loaded from a file) the file.

Only stdlib + yaml here: importing this module never pulls torch or Ray.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rlhf_ray.errors import UserError


class ConfigError(UserError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def doc(help: str, **kw: Any) -> dict:
    """Field metadata helper: ``x: int = field(default=1, metadata=doc("what x is"))``."""
    return {"help": help, **kw}


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {msg}")


class Config:
    """Mixin: dict/YAML round trip with type checking and unknown-key detection."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "") -> "Config":
        data = dict(data or {})
        where = f" (in {source})" if source else ""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {unknown}{where}; valid keys: {sorted(known)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            default = _field_default(known[name])
            if isinstance(default, Config) and isinstance(value, Mapping):
                # a partial nested mapping overrides this field's own default, not the class's
                value = deep_merge(default.to_dict(), value)
            try:
                kwargs[name] = _coerce(value, hints[name], f"{cls.__name__}.{name}")
            except ConfigError as e:
                raise ConfigError(f"{e}{where}") from None
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{cls.__name__}.{e}{where}") from None

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Config) else v
        return out

    def replace(self, **changes: Any) -> "Config":
        return type(self).from_dict({**self.to_dict(), **changes})

    @classmethod
    def load(cls, path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> "Config":
        """Load from a YAML/JSON file (optional) then apply ``overrides`` (CLI flags)."""
        data: dict[str, Any] = {}
        src = ""
        if path is not None:
            src = str(path)
            data = read_mapping(path)
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(data, source=src)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping, with an error that names the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) if p.suffix in {".yaml", ".yml"} else json.loads(p.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML/JSON: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at top level, got {type(data).__name__}")
    return data


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, name) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        return tp.from_dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "false", "0", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


# --------------------------------------------------------------------------- data


@dataclass
class DataConfig(Config):
    """How raw interactions become training data (``rlhf-ray data prepare``)."""

    dataset: str = field(default="ml-100k", metadata=doc(
        "dataset name: ml-100k | amazon2014 | amazon2018 | amazon2023 | csv | parquet | synthetic"))
    path: str | None = field(default=None, metadata=doc(
        "raw data location (file or directory); ml-100k: a GroupLens zip/dir or RecBole atomic dir; "
        "default: the fetch cache"))
    meta_path: str | None = field(default=None, metadata=doc("item metadata file (Amazon meta JSON lines)"))
    k_core: int = field(default=5, metadata=doc("iteratively keep users and items with >= k interactions"))
    positive_threshold: float = field(default=3.0, metadata=doc("ratings strictly above this are positives"))
    split: str = field(default="leave_one_out", metadata=doc(
        "leave_one_out (last positive = test, second last = valid) | temporal (per-user 80/10/10)"))
    tail_fraction: float = field(default=0.2, metadata=doc("fraction of least-frequent training items called tail"))
    max_history: int = field(default=50, metadata=doc("keep at most this many most recent history items"))
    seed: int = field(default=0, metadata=doc("seed for the synthetic generator and any sampling"))
    synthetic_users: int = field(default=200, metadata=doc("synthetic generator: number of users"))
    synthetic_items: int = field(default=300, metadata=doc("synthetic generator: number of items"))
    synthetic_interactions: int = field(default=20, metadata=doc("synthetic generator: mean interactions per user"))
    columns: list[str] = field(default_factory=list, metadata=doc(
        "csv/parquet: column renames NAME=COLUMN for NAME in user,item,rating,timestamp,title,category "
        "(e.g. user=userId,item=movieId)"))

    def __post_init__(self) -> None:
        _check(self.k_core >= 0, "k_core", f"must be >= 0, got {self.k_core}")
        _check(self.split in {"leave_one_out", "temporal"}, "split",
               f"must be leave_one_out or temporal, got {self.split!r}")
        _check(0.0 < self.tail_fraction < 1.0, "tail_fraction", f"must be in (0, 1), got {self.tail_fraction}")
        _check(self.max_history >= 1, "max_history", f"must be >= 1, got {self.max_history}")
        _check(self.synthetic_users >= 2 and self.synthetic_items >= 10, "synthetic_users",
               "synthetic data needs >= 2 users and >= 10 items")
        for pair in self.columns:
            _check("=" in pair, "columns", f"expected NAME=COLUMN, got {pair!r}")


# --------------------------------------------------------------------------- model / training


@dataclass
class ModelConfig(Config):
    """The policy backbone: a GPT-2 built from these sizes, or any HF causal-LM directory."""

    base_model: str | None = field(default=None, metadata=doc(
        "HF causal-LM directory to start from (from_pretrained; embeddings are resized for item "
        "tokens); default: build a GPT-2 from the sizes below"))
    n_layer: int = field(default=2, metadata=doc("transformer blocks"))
    n_embd: int = field(default=128, metadata=doc("hidden size"))
    n_head: int = field(default=4, metadata=doc("attention heads (must divide n_embd)"))
    n_positions: int = field(default=128, metadata=doc("maximum sequence length"))
    dropout: float = field(default=0.1, metadata=doc("dropout on residuals, embeddings and attention"))
    text_vocab_size: int = field(default=1000, metadata=doc("byte-level BPE size for the meta text"))
    user_tokens: bool = field(default=False, metadata=doc("give every user a token (prepended to the prompt)"))
    lora: bool = field(default=False, metadata=doc("train LoRA adapters (peft) instead of all weights"))
    lora_r: int = field(default=8, metadata=doc("LoRA rank"))
    lora_alpha: int = field(default=16, metadata=doc("LoRA scaling alpha"))
    lora_dropout: float = field(default=0.05, metadata=doc("LoRA dropout"))

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "n_positions", "lora_r"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _check(self.n_embd % self.n_head == 0, "n_head", f"{self.n_head} does not divide n_embd={self.n_embd}")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.text_vocab_size >= 300, "text_vocab_size",
               f"must be >= 300 (256 bytes + specials), got {self.text_vocab_size}")


@dataclass
class TrainConfig(Config):
    """Optimisation, parallelism and bookkeeping shared by every training stage."""

    epochs: int = field(default=10, metadata=doc("passes over the training data"))
    max_steps: int = field(default=0, metadata=doc("stop after this many optimizer steps (0 = no limit)"))
    batch_size: int = field(default=64, metadata=doc("global batch size (split across workers)"))
    lr: float = field(default=1e-3, metadata=doc("peak learning rate (AdamW)"))
    weight_decay: float = field(default=0.01, metadata=doc("AdamW weight decay"))
    warmup_ratio: float = field(default=0.05, metadata=doc("linear warm-up fraction of total steps, then cosine"))
    grad_clip: float = field(default=1.0, metadata=doc("clip the global gradient norm (0 = off)"))
    seed: int = field(default=0, metadata=doc("random seed (data order, init, dropout)"))
    eval_every: int = field(default=1, metadata=doc("validate every N epochs"))
    patience: int = field(default=3, metadata=doc("early stop after N validations without improvement (0 = off)"))
    eval_users: int = field(default=0, metadata=doc("validate on at most N users (0 = all)"))
    num_workers: int = field(default=0, metadata=doc(
        "Ray Train workers (0 = run in this process without Ray)"))
    zero_stage: int = field(default=0, metadata=doc("DeepSpeed ZeRO stage 0-3 (0 = plain DDP / torch)"))
    offload: bool = field(default=False, metadata=doc("ZeRO-3 CPU offload of parameters and optimizer state"))
    dtype: str = field(default="fp32", metadata=doc("fp32 | bf16 | fp16 (fp16 needs a GPU)"))
    device: str = field(default="auto", metadata=doc("auto | cpu | cuda"))
    cpus_per_worker: float = field(default=1.0, metadata=doc("CPUs reserved per Ray Train worker"))
    tensorboard: bool = field(default=True, metadata=doc("write TensorBoard events under the output dir"))
    progress: bool = field(default=True, metadata=doc("show progress bars"))

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "patience", "eval_users", "num_workers"):
            _check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        _check(self.dtype in ("fp32", "bf16", "fp16"), "dtype", f"must be fp32, bf16 or fp16, got {self.dtype!r}")
        _check(self.device in ("auto", "cpu", "cuda"), "device", f"must be auto, cpu or cuda, got {self.device!r}")
        _check(not self.offload or self.zero_stage == 3, "offload", "needs zero_stage 3")
        _check(self.cpus_per_worker > 0, "cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")


@dataclass
class PretrainConfig(Config):
    """Stage 1: rating prediction + next-token prediction on item meta text."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc("backbone"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, patience=0), metadata=doc("optimisation"))
    rating_weight: float = field(default=1.0, metadata=doc("weight of L_rating (history -> item rating MSE)"))
    text_weight: float = field(default=1.0, metadata=doc("weight of L_next on the meta text"))
    max_history: int = field(default=20, metadata=doc("history items in a rating-prediction prompt"))

    def __post_init__(self) -> None:
        _check(self.rating_weight >= 0 and self.text_weight >= 0, "rating_weight", "weights must be >= 0")
        _check(self.rating_weight + self.text_weight > 0, "rating_weight", "at least one loss weight must be > 0")
        _check(self.max_history >= 1, "max_history", f"must be >= 1, got {self.max_history}")


@dataclass
class SFTConfig(Config):
    """Stage 2: ground-truth ranked pages (L_rank) + next-item prediction on every prefix."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc(
        "backbone (used only when starting without a pre-trained checkpoint)"))
    train: TrainConfig = field(default_factory=TrainConfig, metadata=doc("optimisation"))
    page_size: int = field(default=10, metadata=doc("K: items on a page"))
    max_history: int = field(default=50, metadata=doc("most recent history items in a prompt"))
    window_stride: int = field(default=10, metadata=doc(
        "next-item training slides a max_history window over each user's sequence with this stride"))
    page_cuts: int = field(default=4, metadata=doc("ranked-page examples per user (cut points in the history)"))
    rank_weight: float = field(default=1.0, metadata=doc("weight of L_rank on page tokens"))
    next_weight: float = field(default=1.0, metadata=doc("weight of next-item loss on history prefixes"))

    def __post_init__(self) -> None:
        _check(1 <= self.page_size <= 100, "page_size", f"must be in [1, 100], got {self.page_size}")
        _check(self.max_history >= 1, "max_history", f"must be >= 1, got {self.max_history}")
        _check(self.window_stride >= 1, "window_stride", f"must be >= 1, got {self.window_stride}")
        _check(self.page_cuts >= 0, "page_cuts", f"must be >= 0, got {self.page_cuts}")
        _check(self.rank_weight + self.next_weight > 0, "rank_weight", "at least one loss weight must be > 0")


@dataclass
class GenerationConfig(Config):
    """Constrained page decoding, shared by evaluation, rollouts and serving."""

    page_size: int = field(default=10, metadata=doc("K: items on a page"))
    strategy: str = field(default="greedy", metadata=doc("greedy | sample | beam"))
    temperature: float = field(default=1.0, metadata=doc("sampling temperature"))
    top_k: int = field(default=0, metadata=doc("sample among the k most likely items (0 = all)"))
    num_beams: int = field(default=4, metadata=doc("beams for strategy=beam"))
    exclude_seen: bool = field(default=True, metadata=doc("never recommend an item in the user's history"))
    max_history: int = field(default=50, metadata=doc("most recent history items in the prompt"))

    def __post_init__(self) -> None:
        _check(1 <= self.page_size <= 100, "page_size", f"must be in [1, 100], got {self.page_size}")
        _check(self.strategy in ("greedy", "sample", "beam"), "strategy",
               f"must be greedy, sample or beam, got {self.strategy!r}")
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _check(self.top_k >= 0, "top_k", f"must be >= 0, got {self.top_k}")
        _check(self.num_beams >= 1, "num_beams", f"must be >= 1, got {self.num_beams}")
        _check(self.max_history >= 1, "max_history", f"must be >= 1, got {self.max_history}")


# --------------------------------------------------------------------------- LPO


LPO_LOSSES = ("lpo", "lpo_sigmoid", "dpo", "sdpo")
LPO_SAMPLERS = ("gumbel", "uniform", "popularity", "in_batch")


@dataclass
class LPOConfig(Config):
    """LPO4Rec listwise alignment from an SFT checkpoint (DPO / S-DPO as baselines).

    Per example (history -> next positive item, positive s+ vs. N sampled negatives s-):
    L = (1/B) sum_b w_b (ce_weight * CE_b + lpo_weight * LPO_b),  w = tail_reweight(tail target).
    """

    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc(
        "backbone (unused: LPO always starts from the --sft checkpoint's model)"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=1e-4, patience=2),
                               metadata=doc("optimisation"))
    loss: typing.Literal["lpo", "lpo_sigmoid", "dpo", "sdpo"] = field(default="lpo", metadata=doc(
        "lpo (softmax over 1 positive + N negatives) | lpo_sigmoid (N pairwise terms) | "
        "dpo (1 negative, frozen reference) | sdpo (N negatives, frozen reference)"))
    beta: float = field(default=1.0, metadata=doc("inverse temperature on the scores inside the preference loss"))
    n_negatives: int = field(default=16, metadata=doc("N: negatives per example (dpo always uses 1)"))
    sampler: typing.Literal["gumbel", "uniform", "popularity", "in_batch"] = field(default="gumbel", metadata=doc(
        "gumbel (Gumbel-top-k on the policy's scores / tau: hard negatives) | uniform | "
        "popularity (p ~ training popularity) | in_batch (other examples' positives)"))
    tau: float = field(default=1.0, metadata=doc(
        "Gumbel temperature: low = the highest-scoring (hardest) negatives, high = near uniform"))
    pool: typing.Literal["all", "head", "tail"] = field(default="head", metadata=doc(
        "items negatives are drawn from: all | head (LPO4Rec: push popular items below the positive) | tail"))
    reweight_strength: float = field(default=1.0, metadata=doc(
        "adaptive reweighting towards tail-target examples: w = B softmax(strength * 1[tail]) (0 = uniform)"))
    lpo_weight: float = field(default=1.0, metadata=doc("lambda: weight of the preference loss"))
    ce_weight: float = field(default=1.0, metadata=doc("weight of the positive's cross-entropy -log pi(pos)"))
    reference: bool = field(default=False, metadata=doc(
        "lpo/lpo_sigmoid: score s = log pi - log pi_ref with a frozen copy of the SFT policy "
        "(dpo and sdpo always use the reference)"))
    max_history: int = field(default=50, metadata=doc("most recent history items in a prompt"))
    examples_per_user: int = field(default=4, metadata=doc(
        "(history prefix -> next positive) examples per user and epoch; the newest is always one"))

    def __post_init__(self) -> None:
        _check(self.loss in LPO_LOSSES, "loss", f"must be one of {list(LPO_LOSSES)}, got {self.loss!r}")
        _check(self.sampler in LPO_SAMPLERS, "sampler", f"must be one of {list(LPO_SAMPLERS)}, got {self.sampler!r}")
        _check(self.pool in ("all", "head", "tail"), "pool", f"must be all, head or tail, got {self.pool!r}")
        _check(self.beta > 0, "beta", f"must be > 0, got {self.beta}")
        _check(self.n_negatives >= 1, "n_negatives", f"must be >= 1, got {self.n_negatives}")
        _check(self.tau > 0, "tau", f"must be > 0, got {self.tau}")
        _check(self.reweight_strength >= 0, "reweight_strength", f"must be >= 0, got {self.reweight_strength}")
        _check(self.lpo_weight >= 0 and self.ce_weight >= 0, "lpo_weight", "loss weights must be >= 0")
        _check(self.lpo_weight + self.ce_weight > 0, "lpo_weight", "at least one loss weight must be > 0")
        _check(self.max_history >= 1, "max_history", f"must be >= 1, got {self.max_history}")
        _check(self.examples_per_user >= 1, "examples_per_user", f"must be >= 1, got {self.examples_per_user}")

    @property
    def uses_reference(self) -> bool:
        """A frozen reference policy is needed (dpo/sdpo, or reference scoring)."""
        return self.reference or self.loss in ("dpo", "sdpo")

    @property
    def negatives(self) -> int:
        """Negatives drawn per example: 1 for dpo, else n_negatives."""
        return 1 if self.loss == "dpo" else self.n_negatives


# --------------------------------------------------------------------------- serving


@dataclass
class ServeConfig(Config):
    """``rlhf-ray serve``: the Ray Serve ranker (HTTP address, replicas, batching, request limits).

    ``checkpoint``, ``max_batch_size`` and ``batch_wait_ms`` travel in the deployment's
    ``user_config``: changing only them reconfigures running replicas in place.
    """

    checkpoint: str | None = field(default=None, metadata=doc(
        "checkpoint directory to serve (any stage); switch later with a user_config update"))
    data: str | None = field(default=None, metadata=doc(
        "prepared data directory: known users' histories come from its sequences.parquet"))
    host: str = field(default="127.0.0.1", metadata=doc("HTTP bind address (0.0.0.0 exposes it to the network)"))
    port: int = field(default=8000, metadata=doc("HTTP port"))
    route_prefix: str = field(default="/", metadata=doc("URL prefix of the application"))
    app_name: str = field(default="ranker", metadata=doc("Serve application name"))
    address: str | None = field(default=None, metadata=doc(
        "attach to a Ray cluster (auto | ray://host:10001); default: embedded local Ray"))
    num_cpus: int = field(default=0, metadata=doc("CPUs of an embedded local Ray (0 = all)"))
    replicas: int = field(default=1, metadata=doc("replicas of the ranker (ignored with --autoscaling)"))
    autoscaling: bool = field(default=False, metadata=doc("let Serve scale replicas between min and max"))
    min_replicas: int = field(default=1, metadata=doc("autoscaling: fewest replicas"))
    max_replicas: int = field(default=2, metadata=doc("autoscaling: most replicas"))
    target_ongoing_requests: float = field(default=16.0, metadata=doc(
        "autoscaling: requests in flight per replica to aim for"))
    cpus_per_replica: float = field(default=1.0, metadata=doc("CPUs Ray reserves for each replica"))
    torch_threads: int = field(default=1, metadata=doc("torch intra-op threads in each replica"))
    max_batch_size: int = field(default=16, metadata=doc("most requests decoded together (@serve.batch)"))
    batch_wait_ms: float = field(default=10.0, metadata=doc(
        "how long a batch waits for more requests after its first one"))
    max_ongoing_requests: int = field(default=64, metadata=doc(
        "requests a replica accepts at once (keep >= max_batch_size)"))
    max_k: int = field(default=50, metadata=doc("largest page a request may ask for"))
    default_k: int = field(default=10, metadata=doc("page size when a request gives no k"))
    max_history: int = field(default=0, metadata=doc(
        "most recent history items in a prompt (0 = the checkpoint's training max_history)"))
    max_body_bytes: int = field(default=65536, metadata=doc("larger request bodies get 413"))
    blocking: bool = field(default=True, metadata=doc(
        "keep running until Ctrl-C; --no-blocking deploys and returns (with --address it stays up)"))

    def __post_init__(self) -> None:
        _check(1 <= self.port <= 65535, "port", f"must be in [1, 65535], got {self.port}")
        _check(self.route_prefix.startswith("/"), "route_prefix", f"must start with '/', got {self.route_prefix!r}")
        _check(self.num_cpus >= 0, "num_cpus", f"must be >= 0, got {self.num_cpus}")
        for name in ("replicas", "min_replicas", "max_replicas", "torch_threads", "max_batch_size",
                     "max_ongoing_requests"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _check(self.min_replicas <= self.max_replicas, "min_replicas",
               f"{self.min_replicas} exceeds max_replicas={self.max_replicas}")
        _check(self.target_ongoing_requests > 0, "target_ongoing_requests",
               f"must be > 0, got {self.target_ongoing_requests}")
        _check(self.cpus_per_replica >= 0, "cpus_per_replica", f"must be >= 0, got {self.cpus_per_replica}")
        _check(self.batch_wait_ms >= 0, "batch_wait_ms", f"must be >= 0, got {self.batch_wait_ms}")
        _check(1 <= self.max_k <= 100, "max_k", f"must be in [1, 100], got {self.max_k}")
        _check(1 <= self.default_k <= self.max_k, "default_k", f"must be in [1, max_k={self.max_k}], got {self.default_k}")
        _check(self.max_history >= 0, "max_history", f"must be >= 0, got {self.max_history}")
        _check(self.max_body_bytes >= 1024, "max_body_bytes", f"must be >= 1024, got {self.max_body_bytes}")


# --------------------------------------------------------------------------- reward model


PAIR_FAMILIES = ("relevance", "ranking", "diversity", "redundancy")


@dataclass
class PairsConfig(Config):
    """Preference pairs synthesised from implicit feedback (``rlhf-ray pairs``; the reward stage).

    Per user, from the training part only (items[:valid_start]): at a cut t the prompt is
    items[:t] and the golden (chosen) page holds the best positives of the next ``window``
    items; each family then writes one worse (rejected) page from it.
    """

    page_size: int = field(default=10, metadata=doc("K: items on a page"))
    window: int = field(default=30, metadata=doc(
        "golden pages draw from the positives among the `window` training items after the cut "
        "(0 = up to the end of the training part)"))
    min_history: int = field(default=3, metadata=doc("a cut leaves at least this many history items"))
    min_page: int = field(default=4, metadata=doc("a cut needs at least this many positives in its window"))
    cuts_per_user: int = field(default=4, metadata=doc(
        "golden pages per user (random cuts; the latest admissible cut is always one)"))
    max_per_category: int = field(default=3, metadata=doc(
        "golden page: at most this many items of one category while other positives allow it"))
    families: list[str] = field(default_factory=lambda: list(PAIR_FAMILIES), metadata=doc(
        "rejected-page families: relevance,ranking,diversity,redundancy"))
    strength: float = field(default=0.5, metadata=doc(
        "perturbation strength in (0, 1]: share of the page replaced (relevance), of the page's "
        "halves swapped (ranking), of off-category items collapsed (diversity), of slots made "
        "redundant (redundancy, at most K/2)"))
    negatives: typing.Literal["random", "popular", "mixed"] = field(default="mixed", metadata=doc(
        "relevance negatives: random (uniform) | popular (p ~ training popularity) | mixed (each slot 50/50)"))
    collapse_categories: int = field(default=1, metadata=doc(
        "diversity family: collapse the page onto its 1 or 2 dominant categories"))
    repeat_fraction: float = field(default=0.0, metadata=doc(
        "redundancy family: share of injected items that are exact repeats (the rest are "
        "same-category nearest co-occurrence neighbours)"))
    valid_users: float = field(default=0.05, metadata=doc("share of users whose pairs are held out for validation"))
    test_users: float = field(default=0.1, metadata=doc("share of users whose pairs are held out for evaluation"))
    seed: int = field(default=0, metadata=doc("seed: same data + config + seed = the same pairs"))

    def __post_init__(self) -> None:
        _check(1 <= self.page_size <= 100, "page_size", f"must be in [1, 100], got {self.page_size}")
        _check(self.window >= 0, "window", f"must be >= 0, got {self.window}")
        _check(self.min_history >= 1, "min_history", f"must be >= 1, got {self.min_history}")
        _check(2 <= self.min_page <= self.page_size, "min_page",
               f"must be in [2, page_size={self.page_size}], got {self.min_page}")
        _check(self.cuts_per_user >= 1, "cuts_per_user", f"must be >= 1, got {self.cuts_per_user}")
        _check(self.max_per_category >= 1, "max_per_category", f"must be >= 1, got {self.max_per_category}")
        bad = sorted(set(self.families) - set(PAIR_FAMILIES))
        _check(not bad and len(self.families) > 0, "families",
               f"must be a non-empty subset of {list(PAIR_FAMILIES)}, got {self.families}")
        _check(0.0 < self.strength <= 1.0, "strength", f"must be in (0, 1], got {self.strength}")
        _check(self.negatives in ("random", "popular", "mixed"), "negatives",
               f"must be random, popular or mixed, got {self.negatives!r}")
        _check(self.collapse_categories in (1, 2), "collapse_categories",
               f"must be 1 or 2, got {self.collapse_categories}")
        _check(0.0 <= self.repeat_fraction <= 1.0, "repeat_fraction", f"must be in [0, 1], got {self.repeat_fraction}")
        _check(0.0 < self.valid_users < 1.0 and 0.0 <= self.test_users < 1.0, "valid_users",
               "valid_users must be in (0, 1) and test_users in [0, 1)")
        _check(self.valid_users + self.test_users < 1.0, "test_users",
               f"valid_users + test_users must be < 1, got {self.valid_users + self.test_users}")


@dataclass
class RewardConfig(Config):
    """Mixed-grained reward model (PageLLM): R = alpha * g(page, user) + (1 - alpha) * mean_t r_t.

    Page head g reads the hidden state of an ``<eos>`` after the page; item head r_t the state
    at each page item token. Loss = page_weight * BT(g_c, g_r) + item_weight * BT(mean r_c, mean r_r).
    """

    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc(
        "backbone (used only when starting without an SFT checkpoint)"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=1e-3, patience=2),
                               metadata=doc("optimisation"))
    pairs: PairsConfig = field(default_factory=PairsConfig, metadata=doc("preference-pair synthesis"))
    pairs_file: str | None = field(default=None, metadata=doc(
        "read pairs from this Parquet file (rlhf-ray pairs) instead of synthesising them"))
    alpha: float = field(default=0.5, metadata=doc(
        "reward mix ratio: R = alpha * page score + (1 - alpha) * mean item reward (normalised heads)"))
    page_weight: float = field(default=1.0, metadata=doc("weight of the page-head Bradley-Terry loss"))
    item_weight: float = field(default=1.0, metadata=doc("weight of the mean-item-reward Bradley-Terry loss"))
    max_history: int = field(default=20, metadata=doc(
        "most recent history items in a prompt (scoring cost grows with it; PPO scores every rollout)"))
    norm_pairs: int = field(default=1024, metadata=doc(
        "training pairs scored for the reward normalisation statistics (mean/std per head)"))

    def __post_init__(self) -> None:
        _check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        _check(self.page_weight >= 0 and self.item_weight >= 0, "page_weight", "loss weights must be >= 0")
        _check(self.page_weight + self.item_weight > 0, "page_weight", "at least one loss weight must be > 0")
        _check(self.max_history >= 1, "max_history", f"must be >= 1, got {self.max_history}")
        _check(self.norm_pairs >= 1, "norm_pairs", f"must be >= 1, got {self.norm_pairs}")


# --------------------------------------------------------------------------- PPO on Ray actors


def _ppo_train(lr: float) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=32, lr=lr, warmup_ratio=0.0, patience=0, tensorboard=False,
                       progress=False)


def _check_resources(name: str, num_cpus: float, num_gpus: float) -> None:
    _check(num_cpus >= 0, f"{name}.num_cpus", f"must be >= 0, got {num_cpus}")
    _check(num_gpus >= 0, f"{name}.num_gpus", f"must be >= 0, got {num_gpus}")


@dataclass
class PPOPolicyConfig(Config):
    """The trained policy: a group of ``ranks`` PolicyActors sharing one DeepSpeed/torch engine setup.

    Only the engine fields of ``train`` are read (lr, weight_decay, warmup_ratio, grad_clip,
    zero_stage, offload, dtype, device); ``train.batch_size`` is the PPO minibatch (global,
    split evenly across ranks).
    """

    ranks: int = field(default=1, metadata=doc("actors in the policy group (one torch.distributed rank each)"))
    num_cpus: float = field(default=0.25, metadata=doc("Ray CPUs per policy actor (fractional shares a bundle)"))
    num_gpus: float = field(default=0.0, metadata=doc("Ray GPUs per policy actor (fractional shares a GPU)"))
    clip_eps: float = field(default=0.2, metadata=doc("PPO ratio clip epsilon"))
    entropy_coef: float = field(default=0.0, metadata=doc("entropy bonus weight: loss -= coef * H(pi)"))
    train: TrainConfig = field(default_factory=lambda: _ppo_train(1e-5), metadata=doc("policy engine"))

    def __post_init__(self) -> None:
        _check(self.ranks >= 1, "ranks", f"must be >= 1, got {self.ranks}")
        _check_resources("policy", self.num_cpus, self.num_gpus)
        _check(self.clip_eps > 0, "clip_eps", f"must be > 0, got {self.clip_eps}")
        _check(self.entropy_coef >= 0, "entropy_coef", f"must be >= 0, got {self.entropy_coef}")
        _check(self.train.batch_size % self.ranks == 0, "train.batch_size",
               f"{self.train.batch_size} is not divisible by ranks={self.ranks} (every rank takes an equal shard)")


@dataclass
class PPOCriticConfig(Config):
    """The value model: SFT backbone + value head, a group of ``ranks`` CriticActors."""

    ranks: int = field(default=1, metadata=doc("actors in the critic group"))
    num_cpus: float = field(default=0.25, metadata=doc("Ray CPUs per critic actor"))
    num_gpus: float = field(default=0.0, metadata=doc("Ray GPUs per critic actor"))
    value_clip: float = field(default=0.2, metadata=doc("clip of the value update around the rollout values"))
    train: TrainConfig = field(default_factory=lambda: _ppo_train(1e-4), metadata=doc("critic engine"))

    def __post_init__(self) -> None:
        _check(self.ranks >= 1, "ranks", f"must be >= 1, got {self.ranks}")
        _check_resources("critic", self.num_cpus, self.num_gpus)
        _check(self.value_clip > 0, "value_clip", f"must be > 0, got {self.value_clip}")
        _check(self.train.batch_size % self.ranks == 0, "train.batch_size",
               f"{self.train.batch_size} is not divisible by ranks={self.ranks} (every rank takes an equal shard)")


@dataclass
class PPORolloutConfig(Config):
    """Inference copies of the policy that write the training pages (sampling, seeded)."""

    actors: int = field(default=1, metadata=doc("rollout actors; the batch's users are split across them"))
    num_cpus: float = field(default=0.25, metadata=doc("Ray CPUs per rollout actor"))
    num_gpus: float = field(default=0.0, metadata=doc("Ray GPUs per rollout actor"))
    temperature: float = field(default=1.0, metadata=doc("sampling temperature"))
    top_k: int = field(default=0, metadata=doc("sample among the k most likely items (0 = all)"))

    def __post_init__(self) -> None:
        _check(self.actors >= 1, "actors", f"must be >= 1, got {self.actors}")
        _check_resources("rollout", self.num_cpus, self.num_gpus)
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _check(self.top_k >= 0, "top_k", f"must be >= 0, got {self.top_k}")


@dataclass
class PPOReferenceConfig(Config):
    """The frozen SFT policy that anchors the KL penalty."""

    num_cpus: float = field(default=0.25, metadata=doc("Ray CPUs of the reference actor"))
    num_gpus: float = field(default=0.0, metadata=doc("Ray GPUs of the reference actor"))

    def __post_init__(self) -> None:
        _check_resources("reference", self.num_cpus, self.num_gpus)


@dataclass
class PPORewardConfig(Config):
    """The reward actor: a trained mixed-grained reward checkpoint or the rule-based reward."""

    alpha: float | None = field(default=None, metadata=doc(
        "reward mix ratio R = alpha * page + (1 - alpha) * mean item reward (default: the checkpoint's)"))
    num_cpus: float = field(default=0.25, metadata=doc("Ray CPUs of the reward actor"))
    num_gpus: float = field(default=0.0, metadata=doc("Ray GPUs of the reward actor"))

    def __post_init__(self) -> None:
        _check(self.alpha is None or 0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        _check_resources("reward", self.num_cpus, self.num_gpus)


@dataclass
class PPOConfig(Config):
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
    page_size: int = field(default=10, metadata=doc("K: items on a page"))
    max_history: int = field(default=50, metadata=doc("most recent history items in a prompt"))
    iterations: int = field(default=20, metadata=doc("PPO iterations (rollout + update)"))
    rollout_batch_size: int = field(default=64, metadata=doc("users (pages) generated per iteration"))
    ppo_epochs: int = field(default=2, metadata=doc("passes over each iteration's experience"))
    gamma: float = field(default=1.0, metadata=doc("discount over page slots"))
    lam: float = field(default=0.95, metadata=doc("GAE lambda"))
    kl_coef: float = field(default=0.05, metadata=doc("KL penalty coefficient (initial value if adaptive)"))
    adaptive_kl: bool = field(default=False, metadata=doc("adapt kl_coef towards kl_target (Ziegler et al.)"))
    kl_target: float = field(default=0.1, metadata=doc("adaptive KL: target mean per-page KL"))
    kl_horizon: int = field(default=10000, metadata=doc("adaptive KL: horizon in pages"))
    kl_estimator: str = field(default="k1", metadata=doc("per-slot KL estimator: k1 | k2 | k3"))
    whiten_advantages: bool = field(default=True, metadata=doc("whiten advantages over the batch"))
    seed: int = field(default=0, metadata=doc("seed: data order, rollout sampling, minibatch order, heads"))
    eval_every: int = field(default=5, metadata=doc("validate every N iterations (0 = never)"))
    eval_users: int = field(default=200, metadata=doc("validate on at most N users (0 = all)"))
    save_every: int = field(default=5, metadata=doc("write a resumable state every N iterations (0 = only at the end)"))
    keep_states: int = field(default=2, metadata=doc("resumable states kept under OUT/state (oldest removed)"))
    hack_threshold: float = field(default=0.05, metadata=doc(
        "reward-hacking monitor: flag when reward rose while validation NDCG@10 or ILD fell by more "
        "than this fraction of its first value"))
    hack_stop: bool = field(default=False, metadata=doc("stop the run when the reward-hacking monitor flags"))
    colocate: bool = field(default=True, metadata=doc(
        "all roles share one placement group (fractional CPUs/GPUs per actor); false: one group per role"))
    strategy: str = field(default="PACK", metadata=doc("placement strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD"))

    def __post_init__(self) -> None:
        _check(1 <= self.page_size <= 100, "page_size", f"must be in [1, 100], got {self.page_size}")
        for name in ("max_history", "iterations", "rollout_batch_size", "ppo_epochs", "kl_horizon", "keep_states"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "eval_users", "save_every"):
            _check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        _check(0.0 < self.gamma <= 1.0, "gamma", f"must be in (0, 1], got {self.gamma}")
        _check(0.0 <= self.lam <= 1.0, "lam", f"must be in [0, 1], got {self.lam}")
        _check(self.kl_coef >= 0, "kl_coef", f"must be >= 0, got {self.kl_coef}")
        _check(self.kl_target > 0, "kl_target", f"must be > 0, got {self.kl_target}")
        _check(self.kl_estimator in ("k1", "k2", "k3"), "kl_estimator", f"must be k1, k2 or k3, got {self.kl_estimator!r}")
        _check(self.hack_threshold >= 0, "hack_threshold", f"must be >= 0, got {self.hack_threshold}")
        _check(self.strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"), "strategy",
               f"must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, got {self.strategy!r}")
        for role in ("policy", "critic"):
            mb = getattr(self, role).train.batch_size
            _check(self.rollout_batch_size % mb == 0, f"{role}.train.batch_size",
                   f"minibatch {mb} does not divide rollout_batch_size={self.rollout_batch_size}")
