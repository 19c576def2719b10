"""Start any registered stage: in this process, on a Ray Train worker group, or with the
stage's own launcher (PPO places its own actors).

    launch("sft", cfg, data_dir, out_dir, init="runs/pretrain")                 # by name
    launch(stage, cfg, data_dir, out_dir, init=sft, inputs={"reward": rm}, resume=True)

A stage without a launcher runs ``stage.run(cfg, ...)`` here when ``train.num_workers`` is 0
(and no ``address``), else on a Ray Train ``TorchTrainer``: each worker runs the very same
``run``, Ray Train has formed the torch.distributed group (gloo on CPU, NCCL on GPU), the loop
shards batches by rank, DeepSpeed ZeRO partitions state, and rank 0 writes the checkpoint and
reports it. The driver then makes sure the checkpoint sits at ``out_dir`` (copying it from
Ray's storage when the worker ran on another node) and, inside a Tune trial, reports the
final metrics and checkpoint to Tune, as an in-process run does itself.

Every location (data, checkpoints, ``out``, ``storage``) may be a local path (on a cluster: one
file system every node mounts) or a storage URI (``s3://...``, ``file://...``; see
:mod:`rlhf_ray.storage`). Ray Train keeps its results and checkpoints in ``storage``
(default ``<out>.ray`` beside the checkpoint) and retries a failed worker group up to
``train.max_failures`` times, restarting from the last checkpoint it reported.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rlhf_ray import storage as store
from rlhf_ray.checkpoint import MANIFEST, atomic_dir, read_manifest, verify_checkpoint
from rlhf_ray.errors import UserError
from rlhf_ray.stages.registry import Stage, resolve


def _abs(location: str | None) -> str | None:
    return store.normalize(location) if location else None


def _check_histories(cfg, init: str | None) -> None:
    """On the driver, before any worker group or actor starts (a worker's error would come back
    wrapped and be retried): the checkpoints a stage continues keep their history length, the
    one it starts from and a reward stage's ``policy_checkpoint``."""
    from rlhf_ray.stages.common import check_history

    for location in (init, getattr(cfg, "policy_checkpoint", None)):
        if location:
            check_history(read_manifest(_abs(str(location))), cfg, str(location))


def _worker(config: dict) -> None:
    # Ray Train starts each worker in a directory of its own (measured: <session>/artifacts/<run name>); back to
    # the driver's, where it exists on this node, so the config's relative paths (a reward stage's pairs_file, a
    # base_model directory) name what they named on the driver, as when the stage runs in-process
    if config.get("cwd") and os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    stage = resolve(config["stage"])
    cfg = stage.config.from_dict(config["cfg"])
    stage.run(cfg, config["data"], config["out"], config.get("init"), **config.get("inputs", {}))


def storage_default(out_dir: str) -> str:
    """Where Ray Train keeps a stage's results unless told: ``<out>.ray`` beside its checkpoint."""
    return store.sibling(out_dir, ".ray")


def launch(stage: str | Stage, cfg, data_dir: str, out_dir: str, init: str | None = None,
           inputs: dict[str, str] | None = None, address: str | None = None, resume: bool | str = False,
           storage: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Train ``stage``; returns its final metrics. ``address``: attach to a Ray cluster.

    ``inputs``: the checkpoints of ``stage.needs`` by name ("rule" passes through for PPO's
    reward). ``resume``: a resumable stage continues from its own saved state (True) or from a
    saved state directory of another run (its path; see ``Stage.adoptable``).
    """
    stage = resolve(stage)
    if stage.init_required and not init:
        raise UserError(f"{stage.name} starts from a checkpoint: give {stage.init_flag} DIR")
    missing = sorted(set(stage.needs) - set(inputs or {}))
    if missing:
        raise UserError(f"{stage.name} needs {', '.join('--' + m for m in missing)}")
    out_dir, data_dir, init = _abs(out_dir), _abs(data_dir), _abs(init)
    inputs = {k: v if v == "rule" else _abs(v) for k, v in (inputs or {}).items()}
    if stage.launcher is not None:
        return stage.launcher(cfg, data_dir, out_dir, init, address=address, resume=resume, num_cpus=num_cpus,
                              **inputs)
    _check_histories(cfg, init)
    train = cfg.train
    if train.num_workers == 0 and not address:
        return stage.run(cfg, data_dir, out_dir, init, **inputs)

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from rlhf_ray.engine import resolve_device
    from rlhf_ray.rayutil import init_ray
    from rlhf_ray.stages.runlog import report

    init_ray(address, num_cpus=num_cpus)
    use_gpu = resolve_device(train).type == "cuda" if train.device != "cpu" else False
    workers = max(1, train.num_workers)
    storage_path = storage or storage_default(out_dir)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"stage": stage.name, "cfg": cfg.to_dict(), "data": data_dir, "out": out_dir,
                           "init": init, "inputs": inputs, "cwd": os.getcwd()},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, placement_strategy=train.placement_strategy,
            resources_per_worker={"CPU": train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(name=f"{stage.name}-{store.basename(out_dir)}", storage_path=storage_path,
                                       failure_config=ray.train.FailureConfig(max_failures=train.max_failures)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if not store.exists(store.join(out_dir, MANIFEST)) and result.checkpoint is not None:
        # rank 0 ran on a node whose disk this one does not see: take the copy Ray Train persisted
        with tempfile.TemporaryDirectory() as tmp, store.staged(out_dir) as local_out:
            src = Path(result.checkpoint.to_directory(tmp))
            with atomic_dir(local_out) as dst:
                shutil.copytree(src, dst, dirs_exist_ok=True)
    verify_checkpoint(out_dir)
    metrics = dict(result.metrics or {})
    metrics["checkpoint"] = out_dir
    report(metrics, checkpoint_dir=out_dir)  # a Tune trial that launched workers sees the result too
    return metrics
