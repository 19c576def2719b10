"""The typed-config machinery every stage's config uses (stdlib + yaml only: no torch, no Ray).

A config is a dataclass that subclasses :class:`Config`. Each field documents itself and
declares its rules in its metadata; the rules are checked in one place
(:func:`check_fields`, run by ``Config.__post_init__``), so a class holds no range checks
of its own, only the rules that relate two fields (its ``validate`` method)::

    @dataclass
    class MyConfig(Config):
        n: int = field(default=4, metadata=doc("how many", ge=1))
        mode: Literal["a", "b"] = field(default="a", metadata=doc("a | b"))     # choices: the type

        def validate(self) -> None:
            require(self.n % 2 == 0 or self.mode == "a", "n", "must be even in mode b")

Rules in ``doc(...)``: ``ge``, ``gt``, ``le``, ``lt`` (numbers; ``None`` values pass),
``nonempty`` (lists). Choices are ``typing.Literal`` types (also inside ``list[...]``): the
YAML loader, the CLI (``choices=``) and the check read them from the type.

``Config.from_dict`` is the YAML/CLI entry: unknown keys, wrong types and broken rules fail
with the class, the field and (when loaded from a file) the file. ``ALIASES`` maps an old
key to its current place (``{"old": "new"}``), so renamed keys keep loading.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Mapping

from rlhf_ray.errors import UserError

RULES = ("ge", "gt", "le", "lt", "nonempty")


class ConfigError(UserError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def doc(help: str, **rules: Any) -> dict:
    """Field metadata: ``field(default=1, metadata=doc("what x is", ge=0))``; rules in :data:`RULES`.

    ``legacy=v``: the behaviour before the field existed (:meth:`Config.upgrade`);
    ``cosmetic=True``: the field changes what a run shows, never what it trains (progress bars,
    TensorBoard files), so :meth:`Config.outcome` leaves it out; ``path=True``: a local path (or a
    list of them) that :meth:`Config.resolve_paths` makes absolute."""
    bad = sorted(set(rules) - set(RULES) - {"help", "legacy", "cosmetic", "path"})
    if bad:
        raise TypeError(f"doc(): unknown rule(s) {bad}; valid: {list(RULES)}")
    return {"help": help, **rules}


def require(cond: bool, name: str, msg: str) -> None:
    """A rule between fields (``validate``): raise ``ConfigError("name: msg")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{name}: {msg}")


def choices(tp: Any) -> tuple | None:
    """The allowed values of a ``Literal`` type (inside ``Optional``/``list`` too), else None."""
    tp = unwrap_optional(tp)
    if typing.get_origin(tp) in (list, tuple):
        args = typing.get_args(tp)
        tp = args[0] if args else Any
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _num(x: float) -> str:
    """A bound as written in a message: 0.0 -> "0", 0.5 -> "0.5"."""
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _interval(rules: Mapping[str, Any]) -> str:
    lo = f"[{_num(rules['ge'])}" if "ge" in rules else f"({_num(rules['gt'])}" if "gt" in rules else "(-inf"
    hi = f"{_num(rules['le'])}]" if "le" in rules else f"{_num(rules['lt'])})" if "lt" in rules else "inf)"
    return f"{lo}, {hi}"


def check_fields(cfg: "Config") -> None:
    """Every field's declared rules (choices from its type, bounds from its metadata)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        allowed = choices(hints[f.name])
        if allowed is not None and value is not None:
            values = value if isinstance(value, (list, tuple)) else [value]
            bad = [v for v in values if v not in allowed]
            require(not bad, f.name, f"{bad[0]!r} is not one of {list(allowed)}" if len(values) == 1 and bad
                    else f"must be a subset of {list(allowed)}, got {list(values)}")
        rules = f.metadata
        if rules.get("nonempty"):
            require(len(value) > 0, f.name, f"must not be empty (one or more of {list(allowed or [])})")
        bounds = {k: rules[k] for k in ("ge", "gt", "le", "lt") if k in rules}
        if not bounds or value is None or isinstance(value, bool):
            continue
        ok = (("ge" not in bounds or value >= bounds["ge"]) and ("gt" not in bounds or value > bounds["gt"])
              and ("le" not in bounds or value <= bounds["le"]) and ("lt" not in bounds or value < bounds["lt"]))
        if not ok:
            msg = (f"must be >= {_num(bounds['ge'])}" if set(bounds) == {"ge"} else
                   f"must be > {_num(bounds['gt'])}" if set(bounds) == {"gt"} else f"must be in {_interval(bounds)}")
            raise ConfigError(f"{f.name}: {msg}, got {value}")


class Config:
    """Mixin for config dataclasses: rule checks, dict/YAML round trip, unknown-key detection."""

    ALIASES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        check_fields(self)
        self.validate()

    def validate(self) -> None:
        """Rules that relate several fields (override; single-field rules go in the metadata)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "") -> "Config":
        data = dict(data or {})
        where = f" (in {source})" if source else ""
        for old, new in cls.ALIASES.items():
            if old in data:
                if new in data and data[new] != data[old]:
                    raise ConfigError(f"{cls.__name__}: both {old!r} (old name) and {new!r} given{where}")
                data[new] = data.pop(old)
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

    @classmethod
    def upgrade(cls, recorded: Mapping[str, Any]) -> dict[str, Any]:
        """A config recorded before some fields existed, with each missing field that declares a
        ``legacy`` value (``doc(..., legacy=v)``: the behaviour from before the field existed) set
        to it, nested configs included. Fields without one stay missing, so a comparison with a
        current config fails: whether the old run matches is then unknown."""
        out = dict(recorded)
        for f in dataclasses.fields(cls):
            default = _field_default(f)
            if f.name not in out:
                if "legacy" in f.metadata:
                    out[f.name] = f.metadata["legacy"]
            elif isinstance(default, Config) and isinstance(out[f.name], Mapping):
                out[f.name] = type(default).upgrade(out[f.name])
        return out

    @classmethod
    def resolve_paths(cls, raw: Mapping[str, Any], base: Path) -> dict[str, Any]:
        """``raw`` (this config's section of a YAML) with each relative path of a ``path=True`` field
        that exists under ``base`` made absolute, nested configs included. A process that runs
        elsewhere (a Tune trial runs in its own directory) then reads the same files. URIs, absolute
        paths and names that are not files under ``base`` (a Hugging Face model id) stay as written."""
        def fix(v: Any) -> Any:
            if isinstance(v, list):
                return [fix(x) for x in v]
            if isinstance(v, str) and "://" not in v and not Path(v).expanduser().is_absolute() \
                    and (base / v).exists():
                return str((base / v).resolve())
            return v

        out = dict(raw)
        for f in dataclasses.fields(cls):
            if f.name not in out:
                continue
            if f.metadata.get("path"):
                out[f.name] = fix(out[f.name])
            elif isinstance(out[f.name], Mapping) and isinstance(default := _field_default(f), Config):
                out[f.name] = type(default).resolve_paths(out[f.name], base)
        return out

    @classmethod
    def outcome(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """``d`` (a :meth:`to_dict`) without its ``cosmetic`` fields, nested configs included: what
        decides whether two runs train the same thing (a finished stage rerun with only its
        progress bars switched off is still finished)."""
        out = dict(d)
        for f in dataclasses.fields(cls):
            default = _field_default(f)
            if f.metadata.get("cosmetic"):
                out.pop(f.name, None)
            elif isinstance(default, Config) and isinstance(out.get(f.name), Mapping):
                out[f.name] = type(default).outcome(out[f.name])
        return out

    def matches(self, recorded: Mapping[str, Any]) -> bool:
        """Whether a run recorded with ``recorded`` (a checkpoint manifest's ``config``) trained
        what this config trains: its missing fields read as their legacy values
        (:meth:`upgrade`), cosmetic fields ignored on both sides (:meth:`outcome`)."""
        kind = type(self)
        return kind.outcome(kind.upgrade(recorded)) == kind.outcome(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Config) else v
        return out

    def replace(self, **changes: Any) -> "Config":
        return type(self).from_dict({**self.to_dict(), **changes})


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
        if isinstance(value, str):  # from the CLI: name=value[,name=value...]
            pairs = [kv.split("=", 1) for kv in value.split(",") if kv]
            if any(len(kv) != 2 for kv in pairs):
                raise ConfigError(f"{name}: expected name=value[,name=value...], got {value!r}")
            value = dict(pairs)
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        kt, vt = args if len(args) == 2 else (Any, Any)
        return {_coerce(k, kt, name): _coerce(v, vt, f"{name}.{k}") for k, v in value.items()}
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
    if tp in (int, float):
        return _number(value, tp, name)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _number(value: Any, tp: type, name: str) -> int | float:
    what = "an integer" if tp is int else "a number"
    if not isinstance(value, bool):
        if isinstance(value, int) or (tp is float and isinstance(value, float)):
            return tp(value)
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
    raise ConfigError(f"{name}: expected {what}, got {value!r}")
