"""What every stage logs, and where, written once (the supervised loop and PPO use it alike):

    <out>.logs/tb/               TensorBoard events (rank 0; ``tensorboard: false`` turns them off)
    <out>.logs/metrics.jsonl     one JSON line per epoch / iteration / validation
    Ray Train or Ray Tune        ``report(metrics, checkpoint)`` when the process runs in a
                                 Ray Train worker (``ray.train.report``) or a Tune trial
                                 (``ray.tune.report``, the function-trainable way); else nothing

A sweep trial runs whole stages and wants its own view of their reports (one result per
validation, with the sweep's objective): it wraps them in ``with reporting(transform):``,
and ``transform(numbers, checkpoint_dir)`` returns what to send (or None to send nothing).

Ray is only imported when a session may exist (a Ray worker has imported it already).
"""
from __future__ import annotations

import math
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from rlhf_ray.jsonio import dumps


def log_dir(out_dir: str | Path) -> Path:
    """Where a stage writing its checkpoint to ``out_dir`` keeps its logs: ``<out>.logs``."""
    out = Path(out_dir)
    return out.parent / f"{out.name}.logs"


def session() -> str | None:
    """"train" inside a Ray Train worker, "tune" inside a Tune trial, else None."""
    if "ray" not in sys.modules:  # a Ray worker has imported it already; importing costs seconds
        return None
    import ray

    if not ray.is_initialized():
        return None
    try:
        import ray.train

        ray.train.get_context().get_world_size()  # raises outside a Ray Train worker
        return "train"
    except Exception:
        pass
    try:
        import ray.tune

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ray.tune.get_context().get_trial_id() is not None:
                return "tune"
    except Exception:
        pass
    return None


Transform = Callable[[dict, "str | Path | None"], "tuple[dict, str | Path | None] | None"]
_transforms: list[Transform] = []


@contextmanager
def reporting(transform: Transform) -> Iterator[None]:
    """Within the block, every :func:`report` of this process goes through ``transform`` first."""
    _transforms.append(transform)
    try:
        yield
    finally:
        _transforms.remove(transform)


def report(metrics: dict, checkpoint_dir: str | Path | None = None) -> None:
    """Numeric ``metrics`` (and optionally a checkpoint directory) to the Ray Train / Tune session."""
    kind = session()
    if kind is None:
        return
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if _transforms:
        out = _transforms[-1](numbers, checkpoint_dir)
        if out is None:
            return
        numbers, checkpoint_dir = out
    if kind == "train":
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(numbers, checkpoint=ckpt)
    else:
        import ray.tune

        ckpt = ray.tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.tune.report(numbers, checkpoint=ckpt)


class RunLogger:
    """TensorBoard scalars + ``metrics.jsonl`` records under ``directory`` (only where ``enabled``).

    ``log(metrics, step)`` writes both; ``scalars(metrics, step)`` TensorBoard only (per-step
    noise); ``rewrite(records)`` replaces ``metrics.jsonl`` (a resumed run restores its history).
    """

    def __init__(self, directory: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 fresh: bool = True):
        self.dir = Path(directory)
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.rewrite([])
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tb"))
            except Exception:  # tensorboard missing: logging is optional, training is not
                self.tb = None

    @property
    def jsonl(self) -> Path:
        return self.dir / "metrics.jsonl"

    def scalars(self, metrics: dict, step: int) -> None:
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        self.scalars(metrics, step)
        with open(self.jsonl, "a") as f:
            f.write(dumps(metrics, indent=None, sort_keys=True, default=str) + "\n")

    def rewrite(self, records: list[dict]) -> None:
        if not self.enabled:
            return
        tmp = self.dir / ".metrics.jsonl.tmp"
        tmp.write_text("".join(dumps(m, indent=None, sort_keys=True, default=str) + "\n" for m in records))
        tmp.replace(self.jsonl)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

