"""The one training loop every supervised stage (pretrain, SFT, reward, LPO) runs.

A stage supplies a :class:`StageSpec`: the module whose ``forward(batch)`` returns
``(loss, stats)``, a batch iterator for (epoch, rank, world), a validation
function, and an exporter for the final checkpoint. The loop owns everything
else, written once: seeding, the engine (torch/DDP/DeepSpeed ZeRO), progress
bars, TensorBoard, Ray Train reporting, periodic validation, early stopping with
best-weights restore, an optional moving average of the weights (``train.ema_decay``,
:mod:`rlhf_ray.stages.averaging`: validated and exported in place of the trained weights),
and the final export on rank 0.

It runs in-process or inside a Ray Train worker unchanged: Ray is only touched
through :func:`rlhf_ray.stages.runlog.report`, a no-op outside a Ray Train / Tune session.
Logs (TensorBoard + ``metrics.jsonl``) go through the same :class:`~rlhf_ray.stages.runlog.RunLogger`
PPO uses.

With more than one rank the final metrics also carry, for every rank r, evidence that
data-parallel training really ran everywhere (:func:`rank_summary`, gathered from all
ranks): ``dist/rank{r}/steps``, ``dist/rank{r}/param_digest`` (equal on all ranks iff
their live parameters are bit-identical), ``dist/rank{r}/loss_start`` /
``loss_end`` (mean training loss of the rank's first / last few steps) and
``dist/rank{r}/node`` (the Ray node id it ran on; the host name outside Ray).
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from rlhf_ray.config import TrainConfig
from rlhf_ray.engine import Engine, rank_world
from rlhf_ray.seeding import seed_everything
from rlhf_ray.stages.averaging import WeightAverage
from rlhf_ray.stages.runlog import RunLogger, report


@dataclass
class StageSpec:
    name: str
    module: nn.Module  # forward(batch) -> (loss, stats: dict[str, float])
    batches: Callable[[int, int, int], Iterable]  # (epoch, rank, world) -> batches for this rank
    steps_per_epoch: Callable[[int], int]  # world -> optimizer steps in one epoch (same on every rank)
    validate: Callable[[nn.Module], dict] | None  # module (eval mode) -> metrics; every rank calls it
    export: Callable[[dict | None, dict], Path | None]  # (full state dict on rank 0, metrics) -> checkpoint
    key_metric: str = "val/loss"
    mode: str = "min"  # "min" or "max" for key_metric
    history: list = field(default_factory=list)


@contextmanager
def _as_is(model: nn.Module):
    yield model


def _better(new: float, best: float | None, mode: str) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(new)
    return new > best if mode == "max" else new < best


def fit(spec: StageSpec, cfg: TrainConfig, log_dir: Path) -> dict:
    """Train ``spec.module`` with ``cfg``; returns the final metrics (best validation)."""
    rank, world = rank_world()
    seed_everything(cfg.seed, "init", rank)
    steps_epoch = spec.steps_per_epoch(world)
    if steps_epoch < 1:
        raise ValueError(f"{spec.name}: no training batches (batch_size={cfg.batch_size} larger than the data?)")
    total = steps_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    # ZeRO-3 leaves each rank a slice of every weight: validation reads a plain replica holding
    # the gathered weights (Engine.copy_weights_to); one full copy per rank, made before the
    # engine partitions the module
    replica = copy.deepcopy(spec.module) if cfg.zero_stage == 3 and spec.validate is not None else None
    engine = Engine.create(spec.module, cfg, total_steps=total)
    if replica is not None:
        replica.to(engine.device).train(False)
    average = WeightAverage(engine.model, cfg.ema_decay) if cfg.ema_decay else None
    # the weights validated and exported: the running average when there is one, else the trained ones
    held = average.swapped_in if average is not None else _as_is
    is_main = rank == 0
    logger = RunLogger(log_dir, enabled=is_main, tensorboard=cfg.tensorboard)
    progress = cfg.progress and is_main
    best, best_state, stale, step = None, None, 0, 0
    final: dict = {}
    losses: list[float] = []  # this rank's loss per step, for rank_summary
    stopped_by = "epochs"
    t_start = time.time()
    for epoch in range(cfg.epochs):
        engine.train(True)
        bar = _bar(progress, steps_epoch, f"{spec.name} epoch {epoch + 1}/{cfg.epochs}")
        sums: dict[str, float] = {}
        n = 0
        for batch in _take(spec.batches(epoch, rank, world), steps_epoch):
            loss, stats = engine.module(batch)
            engine.backward(loss)
            gnorm = engine.step()
            if average is not None:
                average.update(engine.model)
            step += 1
            n += 1
            stats = {"loss": float(loss.detach()), **stats, "grad_norm": gnorm, "lr": engine.lr}
            losses.append(stats["loss"])
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if is_main:
                logger.scalars({f"train/{k}": v for k, v in stats.items()}, step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if cfg.max_steps and step >= cfg.max_steps:
                break
        if bar is not None:
            bar.close()
        epoch_metrics = {f"train/{k}": v / max(n, 1) for k, v in sums.items()}
        epoch_metrics.update(epoch=epoch + 1, step=step, elapsed_s=time.time() - t_start)
        done = bool(cfg.max_steps and step >= cfg.max_steps) or epoch == cfg.epochs - 1
        if spec.validate is not None and ((epoch + 1) % cfg.eval_every == 0 or done):
            engine.train(False)
            with held(engine.model):
                with torch.no_grad():
                    read = engine.model if replica is None else engine.copy_weights_to(replica)
                    epoch_metrics.update(spec.validate(read))
                key = epoch_metrics.get(spec.key_metric, float("nan"))
                if _better(key, best, spec.mode):
                    best, stale = key, 0
                    best_state = engine.full_state_dict()
                    final = dict(epoch_metrics)
                else:
                    stale += 1
        elif spec.validate is None:  # nothing to select on: the last epoch is exported
            final = dict(epoch_metrics)
        spec.history.append(epoch_metrics)
        if is_main:
            logger.log(epoch_metrics, step)
            shown = {k: round(v, 4) for k, v in epoch_metrics.items()
                     if k in ("train/loss", spec.key_metric, "val/recall@10", "val/loss", "elapsed_s")}
            print(f"[{spec.name}] epoch {epoch + 1}: {shown}", flush=True)
        report(epoch_metrics)
        if done or (cfg.patience and stale >= cfg.patience):
            if cfg.patience and stale >= cfg.patience:
                stopped_by = "early_stopping"
                if is_main:
                    print(f"[{spec.name}] early stop: {spec.key_metric} did not improve for {stale} validations")
            else:
                stopped_by = "max_steps" if cfg.max_steps and step >= cfg.max_steps else "epochs"
            break
    # ``best``, not ``best_state``: under ZeRO-3 the consolidated state is None on every rank but
    # 0, and the gather is a collective every rank must enter alike
    if best is None:
        with held(engine.model):
            best_state = engine.full_state_dict()
    state = best_state
    final = {k: v for k, v in final.items()}
    # how training ended: "early_stopping" (converged on validation), or a cap ("epochs",
    # "max_steps") that bound before validation stopped improving
    final["train/stopped_by"] = stopped_by
    final["train/epochs_run"] = epoch + 1
    final["train/best_epoch"] = final.get("epoch", epoch + 1)
    final["train/steps"] = step
    final["train/wall_s"] = time.time() - t_start
    final.update(rank_summary(engine, step, losses))
    out = spec.export(state if is_main else None, final) if is_main else None
    logger.close()
    if out is not None:
        final["checkpoint"] = str(out)
    report(final, checkpoint_dir=out)
    return final


def param_digest(module: nn.Module, zero3: bool = False) -> int:
    """A 52-bit digest (exact as a float64) of the names and bytes of ``module``'s parameters, in
    order. ``zero3``: the parameters are ZeRO-3 partitioned; each is gathered in turn (a collective)."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        if zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                h.update(p.detach().contiguous().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
        else:
            h.update(p.detach().contiguous().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
    return int(h.hexdigest()[:13], 16)


def rank_summary(engine: Engine, steps: int, losses: list[float], window: int = 3) -> dict:
    """Per-rank steps, parameter digest and first/last-steps loss, gathered from every rank
    (a collective: all ranks call it); ``{}`` with a single rank.

    ``loss_start`` / ``loss_end``: mean loss of the rank's first / last ``min(window, steps // 2)``
    steps (at least one)."""
    import torch.distributed as dist

    rank, world = rank_world()
    if world < 2:
        return {}
    k = max(1, min(window, len(losses) // 2))
    start = sum(losses[:k]) / k if losses else float("nan")
    end = sum(losses[-k:]) / k if losses else float("nan")
    digest = param_digest(engine.model, zero3=engine.deepspeed and engine.cfg.zero_stage == 3)
    mine = torch.tensor([steps, digest, start, end], dtype=torch.float64, device=engine.device)
    rows = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(rows, mine)
    nodes: list = [None] * world
    dist.all_gather_object(nodes, _node())
    out: dict = {}
    for r, row in enumerate(rows):
        s, digest, a, b = row.tolist()
        out.update({f"dist/rank{r}/steps": int(s), f"dist/rank{r}/param_digest": int(digest),
                    f"dist/rank{r}/loss_start": a, f"dist/rank{r}/loss_end": b, f"dist/rank{r}/node": nodes[r]})
    return out


def _node() -> str:
    """Where this rank runs: its Ray node id inside a Ray worker, else the host name."""
    import socket
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _take(it: Iterable, n: int) -> Iterator:
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x
