"""Run a sweep: prepare the shared checkpoints once, run the trials under Ray Tune, then select
on validation, evaluate the selected and the default trial on test once, and write the outputs.

    <out>/shared/            data + the ``prepare`` stages' checkpoints (an ordinary pipeline run dir)
    <out>/tune/              Ray Tune's experiment (trial results, searcher/scheduler state: restore)
    <out>/trials/<id>/       each trial's stage checkpoints and logs
    <out>/results.csv|.md    every trial: knobs, validation and final metrics, wall time
    <out>/pareto.csv         the trials no other trial beats on every Pareto metric
    <out>/plots/             PNGs + index.json (:mod:`rlhf_ray.tune.plots`)
    <out>/best/              the selected trial's policy (``rlhf-ray serve --checkpoint <out>/best``)
    <out>/sweep.json         the selection, test metrics of best and default with intervals

Rerunning the same command on the same ``--out`` continues: finished preparation steps are
skipped, Tune restores the experiment (finished trials are not rerun; unfinished ones restart
and skip their own finished stages), and the outputs are rewritten.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rlhf_ray.errors import UserError
from rlhf_ray.stages import registry
from rlhf_ray.tune.spec import Sweep, describe
from rlhf_ray.tune.trial import trainable

EXPERIMENT = "tune"


class SweepInterrupted(UserError):
    """The Tune run was stopped (Ctrl-C / SIGINT) before every trial finished; rerun to continue."""


def trial_resources(sweep: Sweep) -> list[dict]:
    """A trial's placement-group bundles: its own process, then what its stages' actors need
    (stages run one after another, so bundles are taken elementwise at their largest)."""
    cfgs = sweep.pipeline_configs()
    extra: list[dict] = []
    for name in sweep.cfg.trial:
        stage = registry.get(name)
        if stage.bundles is None:
            continue
        for i, b in enumerate(stage.bundles(cfgs[name])):
            if i == len(extra):
                extra.append({})
            extra[i] = {k: max(extra[i].get(k, 0.0), v) for k, v in {**extra[i], **b}.items()}
    return [{"CPU": sweep.cfg.trial_cpus}, *extra]


def _scheduler(sweep: Sweep):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = sweep.cfg.scheduler
    if s.name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=s.max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    if s.name == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                                       quantile_fraction=s.quantile_fraction,
                                       hyperparam_mutations={d.path: d.domain() for d in sweep.dims})
    return FIFOScheduler()


def default_point(sweep: Sweep) -> dict | None:
    """The base config's values as a first trial, when every one lies in its knob's domain (a
    default of None, e.g. ``ppo.reward.alpha``: "the reward model's own", does not: that
    default is then trained after the sweep, :func:`rlhf_ray.tune.results.add_default`)."""
    if not sweep.cfg.include_default:
        return None
    point = sweep.defaults()
    ok = all(v is not None and d.domain().is_valid(v) for d, v in zip(sweep.dims, point.values()))
    return point if ok else None


def _searcher(sweep: Sweep):
    point = default_point(sweep)
    points = [point] if point else []
    if sweep.cfg.searcher == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
            import optuna  # noqa: F401
        except ImportError:
            raise UserError("searcher: optuna needs Optuna: pip install 'rlhf-ray[tune]'") from None
        return OptunaSearch(points_to_evaluate=points or None, seed=sweep.cfg.seed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=points or None, random_state=sweep.cfg.seed)


def prepare_shared(sweep: Sweep, shared: Path, address: str | None) -> None:
    """The ``prepare`` steps as an ordinary pipeline run (skipped where already complete)."""
    from rlhf_ray.pipeline import run_pipeline

    cfgs = sweep.pipeline_configs()
    print(f"[tune] preparing {sweep.cfg.prepare} in {shared}")
    run_pipeline(cfgs, shared, stages=sweep.cfg.prepare, address=address)


def run_trials(sweep: Sweep, out: Path, address: str | None, num_cpus: int | None):
    """Run (or continue) the Tune experiment; returns its ResultGrid."""
    from ray import tune

    from rlhf_ray.rayutil import init_ray

    init_ray(address, num_cpus=num_cpus, log_to_driver=True)
    fn = tune.with_parameters(trainable, sweep=sweep, shared=str(out / "shared"), work=str(out / "trials"))
    fn = tune.with_resources(fn, tune.PlacementGroupFactory(trial_resources(sweep)))
    exp = out / EXPERIMENT
    if tune.Tuner.can_restore(str(exp)):
        print(f"[tune] continuing the experiment in {exp} (finished trials are kept)")
        tuner = tune.Tuner.restore(str(exp), fn, resume_unfinished=True, resume_errored=True)
    else:
        c = sweep.cfg
        tuner = tune.Tuner(
            fn, param_space={d.path: d.domain() for d in sweep.dims},
            tune_config=tune.TuneConfig(metric="objective", mode=c.objective.mode, scheduler=_scheduler(sweep),
                                        search_alg=_searcher(sweep),
                                        num_samples=c.num_samples + (1 if default_point(sweep) else 0),
                                        max_concurrent_trials=c.max_concurrent or None),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out), verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=1)))
    grid = tuner.fit()
    # Tune returns normally after Ctrl-C (SIGINT), having saved the experiment (interrupted trials
    # as PENDING, for restore): read that state, and stop rather than select among half-run trials
    saved = tune.ExperimentAnalysis(str(exp))
    unfinished = [t for t in saved.trials if t.status not in ("TERMINATED", "ERROR")]
    if unfinished:
        raise SweepInterrupted(f"the sweep stopped with {len(unfinished)} trial(s) unfinished "
                               f"({', '.join(t.trial_id for t in unfinished)}); its state is saved in {exp}: "
                               f"rerun the same command to continue (finished trials are kept)")
    return grid


def run_sweep(sweep: Sweep, out: str | Path, address: str | None = None, num_cpus: int | None = None,
              evaluate_test: bool = True) -> dict:
    from rlhf_ray.tune.results import add_default, collect, write_outputs

    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    for line in describe(sweep):
        print(f"[tune] {line}")
    t0 = time.time()
    prepare_shared(sweep, out / "shared", address)
    grid = run_trials(sweep, out, address, num_cpus)
    rows = collect(grid, sweep, out)
    if sweep.cfg.include_default:
        rows = add_default(rows, sweep, out)
    summary: dict[str, Any] = write_outputs(rows, sweep, out, evaluate_test=evaluate_test)
    summary["seconds"] = time.time() - t0
    return summary
