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

    def __post_init__(self) -> None:
        _check(self.k_core >= 0, "k_core", f"must be >= 0, got {self.k_core}")
        _check(self.split in {"leave_one_out", "temporal"}, "split",
               f"must be leave_one_out or temporal, got {self.split!r}")
        _check(0.0 < self.tail_fraction < 1.0, "tail_fraction", f"must be in (0, 1), got {self.tail_fraction}")
        _check(self.max_history >= 1, "max_history", f"must be >= 1, got {self.max_history}")
        _check(self.synthetic_users >= 2 and self.synthetic_items >= 10, "synthetic_users",
               "synthetic data needs >= 2 users and >= 10 items")
