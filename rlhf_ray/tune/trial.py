"""One sweep trial: train the sweep's ``trial`` stages with the trial's values, from the shared
checkpoints, and report every validation to Tune.

Each trial works in ``<sweep out>/trials/<trial id>/<stage>`` (storage every node of a cluster
sees), starting from ``<sweep out>/shared/`` (the ``prepare`` steps' checkpoints). A stage runs
through :func:`rlhf_ray.stages.launch.launch` exactly as ``rlhf-ray <stage>`` would; PPO's
role actors land in the trial's own placement group (:mod:`actors.placement`).

What Tune sees (:class:`Evaluations`, a :func:`rlhf_ray.stages.runlog.reporting` transform):
one result per validation of any of the trial's stages, holding the ``val/*`` metrics, the
sweep's ``objective``, the newest reward and KL figures of the stage (``reward/*``, ``kl/*``),
``stage_index`` (position of the stage in ``trial``) and ``final`` (1 on a stage's closing
report). The trial's last result is its closing evaluation (:func:`validate_policy`): the final
policy on the validation split with full ranking and generated pages, the same for every trial
whatever its stages validate during training, so trials are selected on one measure. Training-only reports (PPO iterations, per-epoch losses) are folded into the next
result rather than sent, so Tune's ``training_iteration`` counts evaluations: ASHA's rungs
and PBT's interval are in evaluations.

A trial is resumable: a finished stage (complete checkpoint, same config and inputs) is
skipped and PPO continues its own saved state, so a restarted trial does not redo work.

Population-Based Training (``scheduler: pbt``, trial ``[ppo]``): each PPO validation that
coincides with a saved state reports that state as the trial's Tune checkpoint; when PBT
makes a weak trial exploit a strong one, Tune restarts it with the strong trial's state
(:func:`ray.tune.get_checkpoint`) and new values of the searched knobs, and PPO resumes from
that state taking the new values (``Stage.adoptable``: the KL weight, the reward mix, ...).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rlhf_ray.errors import UserError
from rlhf_ray.stages import registry
from rlhf_ray.stages.registry import POLICY
from rlhf_ray.tune.spec import Objective, Sweep

CARRY = ("reward/", "kl/")  # training figures carried into the next evaluation's result


class Evaluations:
    """runlog transform: one Tune result per validation (see the module docstring)."""

    def __init__(self, objective: Objective, stage_index: int, keep_states: bool = False, out: Path | None = None,
                 latest: dict[str, float] | None = None):
        self.objective = objective
        self.stage_index = stage_index
        self.keep_states = keep_states  # PBT: pass a stage's resumable state on as the Tune checkpoint
        self.out = out  # the stage's exported checkpoint (never passed on: it is not a resumable state)
        self.latest = latest if latest is not None else {}  # shared along a trial: the closing result keeps them

    def __call__(self, numbers: dict, checkpoint_dir) -> tuple[dict, str | None] | None:
        self.latest.update({k: v for k, v in numbers.items() if k.startswith(CARRY)})
        vals = {k: v for k, v in numbers.items() if k.startswith("val/")}
        if not vals:
            return None
        obj = self.objective.value(vals)
        if obj is None:
            raise UserError(f"the sweep's objective needs {sorted(self.objective.terms)}, but the stage reports "
                            f"{sorted(vals)}: change objective in the sweep file")
        final = checkpoint_dir is not None and (self.out is None or Path(checkpoint_dir) == self.out)
        state = str(checkpoint_dir) if self.keep_states and checkpoint_dir is not None and not final else None
        return {**vals, **self.latest, "objective": obj, "stage_index": self.stage_index,
                "final": 1.0 if final else 0.0}, state


def shared_policy(sweep: Sweep, shared: Path) -> str | None:
    """The newest policy checkpoint the ``prepare`` steps made (the trials' starting policy)."""
    cfgs = sweep.pipeline_configs()
    policy = None
    for name in cfgs["pipeline"].plan():
        stage = registry.get(name)
        if name in sweep.cfg.prepare and stage.policy:
            policy = str(shared / name)
    return policy


def final_policy(sweep: Sweep, work: Path) -> Path | None:
    """Where a trial's last policy-writing stage puts its checkpoint."""
    policies = [s for s in sweep.cfg.trial if registry.get(s).policy]
    return work / policies[-1] if policies else None


def run_trial(values: dict[str, Any], sweep: Sweep, shared: Path, work: Path, start_state: str | None = None) -> dict:
    """Train the trial's stages with ``values`` ({dotted path: value}); returns the closing
    validation metrics. ``start_state``: a saved state the first stage resumes from (PBT: the
    state of the trial it exploits). Works outside Tune too (the reports then go nowhere)."""
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.pipeline import stage_done
    from rlhf_ray.stages.launch import launch
    from rlhf_ray.stages.runlog import report, reporting

    cfgs = sweep.pipeline_configs(values)
    data = shared / "data"
    prepared = load_prepared(data)
    fingerprint = prepared.fingerprint
    policy = shared_policy(sweep, shared)
    work.mkdir(parents=True, exist_ok=True)
    final: dict = {}
    carried: dict[str, float] = {}  # the newest reward / KL figures, into every later result
    for i, name in enumerate(sweep.cfg.trial):
        stage = registry.get(name)
        out = work / name

        def where(ckpt: str) -> str:  # a checkpoint this trial made, else the shared one
            return str(work / ckpt) if (work / ckpt).is_dir() else str(shared / ckpt)

        init = None if stage.starts_from is None else policy if stage.starts_from == POLICY else where(stage.starts_from)
        inputs = {need: where(need) for need in stage.needs}
        if stage_done(out, cfgs[name], fingerprint, init, inputs):
            print(f"[tune] {name}: complete checkpoint at {out}, skipped")
        else:
            pbt = sweep.cfg.scheduler.name == "pbt"
            resume = start_state if (start_state and i == 0) else "auto" if stage.resumable else False
            with reporting(Evaluations(sweep.cfg.objective, i, keep_states=pbt, out=out, latest=carried)):
                final = launch(stage, cfgs[name], str(data), str(out), init=init, inputs=inputs, resume=resume)
        if stage.policy:
            policy = str(out)
    if policy is None:
        return final
    final = {**carried, **validate_policy(policy, sweep, prepared)}
    with reporting(Evaluations(sweep.cfg.objective, len(sweep.cfg.trial), latest=carried)):
        report(final, checkpoint_dir=policy)
    return final


def validate_policy(policy: str, sweep: Sweep, prepared) -> dict:
    """The trial's closing evaluation: its final policy on the validation split, full ranking
    and generated pages, measured the same way for every trial whatever its stages validated."""
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.evaluation import evaluate_full

    cfgs = sweep.pipeline_configs()
    ck = load_checkpoint(policy)
    ev = evaluate_full(ck.model, ck.vocab, prepared, "valid", cfgs["generation"],
                       max_users=sweep.cfg.eval_users, prefix="val/")
    return ev.metrics


def trainable(config: dict, sweep: Sweep, shared: str, work: str) -> None:
    """The Tune function trainable: one trial in ``work/<trial id>``."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    ckpt = tune.get_checkpoint()  # PBT's exploit (another trial's state), or this trial's own after a failure
    if ckpt is None:
        run_trial(dict(config), sweep, Path(shared), Path(work) / trial_id)
        return
    (Path(work) / trial_id).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="adopt-", dir=Path(work) / trial_id) as tmp:
        state = ckpt.to_directory(tmp)
        run_trial(dict(config), sweep, Path(shared), Path(work) / trial_id, start_state=state)
