"""Run a stage in this process, or on a Ray Train worker group (``train.num_workers >= 1``).

Each worker runs the very same ``stage.run(cfg, ...)``: Ray Train has already formed
the torch.distributed group (gloo on CPU, NCCL on GPU), the loop shards batches by
rank, DeepSpeed ZeRO partitions state, and rank 0 writes the checkpoint and
reports it. The driver then makes sure the checkpoint sits at ``out_dir``, copying
it from Ray's storage when the worker ran on another node.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from rlhf_ray.checkpoint import MANIFEST, atomic_dir, verify_checkpoint


# stage -> (config class name in rlhf_ray.config, module in rlhf_ray.stages); every module has
# run(cfg, data_dir, out_dir, init) and is imported only when its stage runs.
STAGES = {
    "pretrain": ("PretrainConfig", "pretrain"),
    "sft": ("SFTConfig", "sft"),
    "reward": ("RewardConfig", "reward"),
    "lpo": ("LPOConfig", "lpo"),
}


def stage_runner(stage: str):
    """(config class, run function) of a stage."""
    import importlib

    from rlhf_ray import config

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid: {sorted(STAGES)}")
    cls_name, module = STAGES[stage]
    return getattr(config, cls_name), importlib.import_module(f"rlhf_ray.stages.{module}").run


def _worker(config: dict) -> None:
    cls, run = stage_runner(config["stage"])
    cfg = cls.from_dict(config["cfg"])
    run(cfg, config["data"], config["out"], config.get("init"))


def launch(stage: str, cfg, data_dir: str, out_dir: str, init: str | None = None,
           address: str | None = None, storage: str | None = None) -> dict[str, Any]:
    """Train ``stage``; returns its final metrics. ``address``: attach to a Ray cluster."""
    out_dir = str(Path(out_dir).expanduser().resolve())
    data_dir = str(Path(data_dir).expanduser().resolve())
    init = str(Path(init).expanduser().resolve()) if init else None
    train = cfg.train
    if train.num_workers == 0 and not address:
        _, run = stage_runner(stage)
        return run(cfg, data_dir, out_dir, init)

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from rlhf_ray.engine import resolve_device
    from rlhf_ray.rayutil import init_ray

    init_ray(address)
    use_gpu = resolve_device(train).type == "cuda" if train.device != "cpu" else False
    workers = max(1, train.num_workers)
    storage = storage or str(Path(out_dir).parent / f"{Path(out_dir).name}.ray")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"stage": stage, "cfg": cfg.to_dict(), "data": data_dir, "out": out_dir, "init": init},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(name=f"{stage}-{Path(out_dir).name}", storage_path=storage),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if not (Path(out_dir) / MANIFEST).is_file() and result.checkpoint is not None:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(result.checkpoint.to_directory(tmp))
            with atomic_dir(Path(out_dir)) as dst:
                shutil.copytree(src, dst, dirs_exist_ok=True)
    verify_checkpoint(out_dir)
    metrics = dict(result.metrics or {})
    metrics["checkpoint"] = out_dir
    return metrics
