"""A sweep's search space: any pipeline-config field by its dotted path, checked before any trial.

    space:
      ppo.kl_coef:       {loguniform: [0.005, 0.5]}      # low > 0
      ppo.reward.alpha:  {uniform: [0.0, 1.0]}
      lpo.n_negatives:   {choice: [8, 16, 32]}
      lpo.train.epochs:  {randint: [1, 4]}               # low <= x < high, as Ray Tune's randint

A path is ``<section>.<field>[.<field>...]`` of the pipeline YAML (``rlhf-ray pipeline``'s
sections: one per stage, plus data, generation, prompt). :func:`check_space` walks the typed
config classes, so an unknown section or field, a path that ends on a whole sub-config, a bad
bound, or a value the field's own rules refuse (``ppo.kl_coef: {uniform: [-1, 1]}``) is a
``ConfigError`` naming the path, raised before Ray starts. Every sampled value then goes
through the same typed loading as a YAML value.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping

from rlhf_ray.config import Config, ConfigError, deep_merge

KINDS = ("uniform", "loguniform", "choice", "randint")


@dataclasses.dataclass(frozen=True)
class Dim:
    """One searched knob: its dotted path, distribution and arguments."""

    path: str
    kind: str
    args: tuple

    def domain(self):
        """The Ray Tune domain that samples this knob."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        lo, hi = self.args
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](lo, hi)

    def probes(self) -> list:
        """Values that must all be legal: both ends (or every choice)."""
        if self.kind == "choice":
            return list(self.args)
        lo, hi = self.args
        return [lo, hi - 1] if self.kind == "randint" else [lo, hi]

    def describe(self) -> str:
        return f"{self.kind}{list(self.args)}"


def nested(path: str, value: Any) -> dict:
    """``("ppo.reward.alpha", 0.3)`` -> ``{"ppo": {"reward": {"alpha": 0.3}}}``."""
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def overrides(flat: Mapping[str, Any]) -> dict:
    """A trial's ``{dotted path: value}`` as one nested pipeline-config override."""
    out: dict = {}
    for path, value in flat.items():
        out = deep_merge(out, nested(path, value))
    return out


def _parse(path: str, spec: Any, where: str) -> Dim:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(f"{where}: space.{path}: expected one of {{{' | '.join(KINDS)}: [...]}}, got {spec!r}")
    (kind, args), = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"{where}: space.{path}: unknown distribution {kind!r}; valid: {list(KINDS)}")
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"{where}: space.{path}: {kind} takes a list, got {args!r}")
    if kind == "choice":
        return Dim(path, kind, tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}: space.{path}: {kind} takes [low, high] numbers, got {args!r}")
    lo, hi = args
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ConfigError(f"{where}: space.{path}: {kind} needs finite low < high, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: space.{path}: loguniform needs low > 0, got {lo}")
    if kind == "randint" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ConfigError(f"{where}: space.{path}: randint takes integers [low, high), got [{lo}, {hi}]")
    if kind == "randint":
        lo, hi = int(lo), int(hi)
    return Dim(path, kind, (lo, hi))


def _field(sections: Mapping[str, type[Config]], path: str, where: str) -> None:
    """The path names a leaf field of a pipeline section (not a section or a sub-config)."""
    parts = path.split(".")
    if len(parts) < 2:
        raise ConfigError(f"{where}: space.{path}: a path is <section>.<field>; sections: {sorted(sections)}")
    if parts[0] not in sections:
        raise ConfigError(f"{where}: space.{path}: unknown section {parts[0]!r}; valid: {sorted(sections)}")
    cls: Any = sections[parts[0]]
    for i, name in enumerate(parts[1:], start=1):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name not in fields:
            raise ConfigError(f"{where}: space.{path}: {'.'.join(parts[:i])} has no field {name!r}; "
                              f"valid: {sorted(fields)}")
        tp = typing.get_type_hints(cls)[name]
        if isinstance(tp, type) and issubclass(tp, Config):
            cls = tp
            if i == len(parts) - 1:
                raise ConfigError(f"{where}: space.{path}: names a whole sub-config; search one of its fields: "
                                  f"{sorted(f.name for f in dataclasses.fields(cls))}")
        elif i < len(parts) - 1:
            raise ConfigError(f"{where}: space.{path}: {'.'.join(parts[:i + 1])} is a value, not a sub-config")


def parse_space(raw: Any, where: str) -> list[Dim]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where}: space: expected a non-empty mapping of <section>.<field>: {{kind: [...]}}")
    return [_parse(str(path), spec, where) for path, spec in raw.items()]


def check_space(dims: list[Dim], load: typing.Callable[[dict], Any], sections: Mapping[str, type[Config]],
                where: str) -> None:
    """Every path exists and every probe value loads (``load(override)`` builds the pipeline config)."""
    for d in dims:
        _field(sections, d.path, where)
        for value in d.probes():
            try:
                load(nested(d.path, value))
            except ConfigError as e:
                raise ConfigError(f"{where}: space.{d.path} = {value!r} ({d.describe()}) is refused: {e}") from None
