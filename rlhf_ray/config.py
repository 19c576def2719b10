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
