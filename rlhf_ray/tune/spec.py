"""A sweep file (``tune_configs/*.yaml``), typed and checked before any trial starts.

    name: ppo
    base: ml-100k                  # a pipeline YAML: a path (relative to this file) or a bundled name
    overrides: {ppo: {eval_users: 300}}   # pipeline-config changes for every trial (and the default)
    prepare: [data, pretrain, sft, reward] # run once; every trial starts from these checkpoints
    trial: [ppo]                   # the stages each trial trains, in order
    space: {ppo.kl_coef: {loguniform: [0.005, 0.5]}, ppo.reward.alpha: {uniform: [0, 1]}}
    objective: {metric: val/ndcg@10, mode: max}       # or weights: {val/ndcg@10: 1, val/page_ild: 0.1}
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
    searcher: random               # random | optuna (pip install rlhf-ray[tune])
    num_samples: 12
    smoke: {...}                   # pipeline-config changes applied with --smoke (on top of the
                                   # pipeline's own --smoke: synthetic data, few steps)
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rlhf_ray.config import Config, ConfigError, deep_merge, doc, read_mapping, require
from rlhf_ray.tune.space import Dim, check_space, parse_space

Mode = typing.Literal["max", "min"]


@dataclass
class Objective(Config):
    """What the sweep optimises: one validation metric, or a weighted sum of several.

    ``objective = sum_k weights[k] * metric_k`` over the validation metrics of each evaluation
    (``metric: m`` is ``weights: {m: 1}``); every metric named must be reported by the trial's
    stages (``val/ndcg@10``, ``val/recall@20``, ``val/page_ild``, ``val/tail_recall@20``, ...)."""

    metric: str = field(default="val/ndcg@10", metadata=doc("one validation metric (unused when weights are given)"))
    weights: dict = field(default_factory=dict, metadata=doc("metric -> weight of a weighted sum (replaces metric)"))
    mode: Mode = field(default="max", metadata=doc("max | min"))

    def validate(self) -> None:
        for k, w in self.weights.items():
            require(isinstance(w, (int, float)) and not isinstance(w, bool), "weights", f"{k}: weight {w!r} is not a number")

    @property
    def terms(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.weights.items()} if self.weights else {self.metric: 1.0}

    def value(self, metrics: dict) -> float | None:
        """The objective of one evaluation, or None when a metric it names is missing."""
        terms = self.terms
        if not all(k in metrics for k in terms):
            return None
        return float(sum(w * float(metrics[k]) for k, w in terms.items()))


@dataclass
class SchedulerConfig(Config):
    """Trial scheduling. ASHA stops weak trials at rungs (in evaluations); PBT copies the best
    trials' PPO state into the worst and perturbs the searched knobs; fifo runs all to the end."""

    name: typing.Literal["asha", "pbt", "fifo"] = field(default="asha", metadata=doc("asha | pbt | fifo"))
    grace_period: int = field(default=1, metadata=doc("asha: evaluations before a trial can be stopped", ge=1))
    reduction_factor: float = field(default=2.0, metadata=doc("asha: 1/reduction_factor of trials go on per rung",
                                                              gt=1))
    max_t: int = field(default=100, metadata=doc("asha: evaluations after which a trial always stops", ge=1))
    perturbation_interval: int = field(default=1, metadata=doc("pbt: evaluations between exploit/explore", ge=1))
    quantile_fraction: float = field(default=0.25, metadata=doc("pbt: bottom/top fraction exploited", gt=0, le=0.5))


@dataclass
class SweepConfig(Config):
    """A Ray Tune sweep over pipeline-config fields (see the module docstring)."""

    name: str = field(default="sweep", metadata=doc("the sweep's name (Tune experiment name)"))
    base: str = field(default="ml-100k", metadata=doc(
        "pipeline YAML every trial starts from: a path (relative to the sweep file) or a bundled config name"))
    overrides: dict = field(default_factory=dict, metadata=doc("pipeline-config changes for every trial"))
    prepare: list[str] = field(default_factory=lambda: ["data", "pretrain", "sft", "reward"], metadata=doc(
        "pipeline steps run once before the trials (shared checkpoints)"))
    trial: list[str] = field(default_factory=lambda: ["ppo"], metadata=doc(
        "the stages every trial trains, in order, from the shared checkpoints", nonempty=True))
    space: dict = field(default_factory=dict, metadata=doc("dotted config path -> {uniform|loguniform|choice|"
                                                           "randint: [...]}"))
    objective: Objective = field(default_factory=Objective,
                                 metadata=doc("what selection maximises / minimises (validation only)"))
    pareto: list[str] = field(default_factory=lambda: ["val/ndcg@10", "val/page_ild", "val/tail_recall@20"],
                              metadata=doc("validation metrics (all higher-is-better) of the Pareto front"))
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig, metadata=doc("trial scheduler"))
    searcher: typing.Literal["random", "optuna"] = field(default="random", metadata=doc(
        "random (Tune's variant generator) | optuna (TPE; needs the 'tune' extra)"))
    num_samples: int = field(default=12, metadata=doc("trials, besides the default config's", ge=1))
    include_default: bool = field(default=True, metadata=doc(
        "also run the base config's own values as a trial (the baseline the best trial is compared with)"))
    max_concurrent: int = field(default=0, metadata=doc("trials at once (0: as many as the cluster fits)", ge=0))
    trial_cpus: float = field(default=1.0, metadata=doc(
        "CPUs reserved for a trial's own process (it runs the supervised stages); PPO's roles get their "
        "own bundles beside it", gt=0))
    eval_users: int = field(default=0, metadata=doc(
        "validation users of each trial's closing evaluation (0 = all)", ge=0))
    seed: int = field(default=0, metadata=doc("seeds the searcher"))
    smoke: dict = field(default_factory=dict, metadata=doc("pipeline-config changes applied with --smoke"))

    def validate(self) -> None:
        require(not (set(self.trial) & set(self.prepare)), "trial",
                f"stages both prepared and searched: {sorted(set(self.trial) & set(self.prepare))}")


@dataclass
class Sweep:
    """A loaded sweep: its config, where it came from, the pipeline config every trial starts
    from (as raw YAML: each trial applies its own values to it), and the parsed space."""

    cfg: SweepConfig
    path: Path
    base_raw: dict
    dims: list[Dim]
    smoke: bool

    def pipeline_configs(self, values: dict[str, Any] | None = None) -> dict[str, Config]:
        """The typed pipeline configs with a trial's ``{path: value}`` applied."""
        from rlhf_ray.tune.space import overrides

        return _load(self.base_raw, overrides(values or {}), str(self.path))

    def defaults(self) -> dict[str, Any]:
        """The base config's own value of every searched knob (the default trial)."""
        cfgs = self.pipeline_configs()
        out = {}
        for d in self.dims:
            section, *rest = d.path.split(".")
            v: Any = cfgs[section].to_dict()
            for part in rest:
                v = v[part]
            out[d.path] = v
        return out


def _load(base_raw: dict, override: dict, where: str) -> dict[str, Config]:
    from rlhf_ray.pipeline import load_pipeline_raw

    return load_pipeline_raw(deep_merge(base_raw, override), where=where)


def _base_path(base: str, sweep_file: Path) -> Path:
    from rlhf_ray.pipeline import default_config_path

    p = Path(base).expanduser()
    if not p.is_absolute():
        p = sweep_file.parent / p
    if p.is_file():
        return p.resolve()
    bundled = default_config_path(base)
    if bundled.is_file():
        return bundled
    names = sorted(f.stem for f in Path(str(resources.files("rlhf_ray") / "configs")).glob("*.yaml"))
    raise ConfigError(f"{sweep_file}: base: {base!r} is neither a file (relative to the sweep file) nor a bundled "
                      f"config {names}")


def resolve_paths(raw: dict, base: Path) -> dict:
    """The pipeline config ``raw`` with the relative paths of its path fields (a reward model's
    ``pairs_file``, PPO's reward ``members``, a ``base_model`` directory, ...) that exist under
    ``base`` made absolute (:meth:`rlhf_ray.config.Config.resolve_paths`): Tune runs every trial in
    its own directory, where a path relative to where the sweep was started names nothing."""
    from rlhf_ray.pipeline import sections

    secs = sections()
    return {name: secs[name].resolve_paths(sec, base) if name in secs and isinstance(sec, dict) else sec
            for name, sec in raw.items()}


def load_sweep(path: str | Path, smoke: bool = False) -> Sweep:
    """Read and check a sweep file: every error (unknown key, stage or path, bad bound, a value
    the config refuses, an objective or Pareto metric missing) is raised here, before Ray."""
    from rlhf_ray.pipeline import STEPS, sections, smoke_overrides
    from rlhf_ray.stages import registry

    path = Path(path).expanduser().resolve()
    raw = read_mapping(path)
    cfg = SweepConfig.from_dict(raw, source=str(path))
    base_raw = read_mapping(_base_path(cfg.base, path))
    base_raw = deep_merge(base_raw, cfg.overrides)
    if smoke:  # the pipeline's --smoke (synthetic data, few steps), then the sweep's own smoke changes
        base_raw = deep_merge(deep_merge(base_raw, smoke_overrides()), cfg.smoke)
    base_raw = resolve_paths(base_raw, Path.cwd())
    for name in [*cfg.prepare, *cfg.trial]:
        if name not in STEPS:
            registry.get(name)  # a clear error naming the registered stages
    if "eval" in cfg.prepare:
        raise ConfigError(f"{path}: prepare: 'eval' is not a preparation step (the sweep evaluates its own trials)")
    dims = parse_space(cfg.space, str(path))
    sweep = Sweep(cfg, path, base_raw, dims, smoke)
    sweep.pipeline_configs()  # the base itself loads
    check_space(dims, lambda o: _load(base_raw, o, str(path)), sections(), str(path))
    if cfg.scheduler.name == "pbt":
        require(len(cfg.trial) == 1, "scheduler", "pbt sweeps train exactly one stage per trial")
        require(registry.get(cfg.trial[0]).resumable, "scheduler", f"pbt continues trials from their saved state; "
                                                                    f"{cfg.trial[0]} cannot resume (PBT needs trial: [ppo])")
        stage = registry.get(cfg.trial[0])
        fixed = [d.path for d in dims if d.path.split(".", 1)[0] != stage.name
                 or d.path.split(".", 1)[1] not in stage.adoptable]
        require(not fixed, "space", f"pbt changes knobs of running trials; {fixed} cannot change on resume "
                                    f"(adoptable: {[f'{stage.name}.{a}' for a in stage.adoptable]})")
    return sweep


def example_dir() -> Path:
    """Where the shipped sweeps live (``tune_configs/`` at the repository root)."""
    return Path(__file__).resolve().parents[2] / "tune_configs"


def describe(sweep: Sweep) -> list[str]:
    c = sweep.cfg
    lines = [f"sweep {c.name}: {c.num_samples} trials{' + default' if c.include_default else ''}, "
             f"stages {c.trial} from {c.prepare}, {c.scheduler.name}/{c.searcher}, objective "
             f"{c.objective.mode} {' + '.join(f'{w:g}*{k}' for k, w in c.objective.terms.items())}"]
    lines += [f"  {d.path}: {d.describe()}" for d in sweep.dims]
    return lines

