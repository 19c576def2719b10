"""Process-group setup and one optimisation engine over plain torch or DeepSpeed ZeRO.

Everything accelerator-specific is decided here from :class:`TrainConfig`:
device (cpu/cuda), dtype (fp32/bf16/fp16) and collective backend (gloo/nccl).
Stages, PPO roles and LPO use :class:`Engine` the same way whatever the ZeRO
stage: ``loss = ...; engine.backward(loss); engine.step()``.
"""
from __future__ import annotations

import atexit
import math
import os
import socket
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rlhf_ray.config import TrainConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but torch sees no CUDA device")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    if cfg.dtype == "fp16":
        raise ValueError("dtype=fp16 needs a GPU; use bf16 or fp32 on CPU")
    return torch.device("cpu")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_process_group(device: torch.device) -> None:
    """A 1-rank group for in-process runs that need one (DeepSpeed); no-op if one exists."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group(backend_for(device), rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    atexit.register(destroy_process_group)


def destroy_process_group() -> None:
    """Tear down the default process group if one is up. Registered at exit by
    :func:`ensure_process_group`: a gloo/NCCL group still alive while the interpreter
    finalises can crash the process after its work is done (exit code 139)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def owned_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a float32 CPU tensor with storage of its own (always a copy, never a view)."""
    return t.detach().to("cpu", torch.float32, copy=True)


def lr_lambda(total_steps: int, warmup_ratio: float):
    """Linear warm-up then cosine decay to 10% of the peak."""
    warm = max(1, int(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def deepspeed_config(cfg: TrainConfig, micro_batch: int) -> dict:
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if cfg.offload:
        zero["offload_param"] = {"device": "cpu"}
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.dtype == "bf16"},
        "fp16": {"enabled": cfg.dtype == "fp16"},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


@dataclass
class Engine:
    """A trainable module with its optimizer and schedule, over torch or DeepSpeed."""

    module: nn.Module  # call this for forward passes (DDP/DeepSpeed wrapper or the model)
    model: nn.Module  # the unwrapped module
    optimizer: torch.optim.Optimizer
    scheduler: object
    cfg: TrainConfig
    device: torch.device
    deepspeed: bool

    @classmethod
    def create(cls, model: nn.Module, cfg: TrainConfig, total_steps: int, micro_batch: int | None = None) -> "Engine":
        device = resolve_device(cfg)
        rank, world = rank_world()
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        sched_fn = lr_lambda(total_steps, cfg.warmup_ratio)
        if cfg.zero_stage == 0:
            model.to(device=device, dtype=DTYPES[cfg.dtype] if cfg.dtype == "bf16" else torch.float32)
            opt = torch.optim.AdamW(groups, lr=cfg.lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, sched_fn)
            module = model
            if world > 1:
                module = nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=True)
            return cls(module, model, opt, sched, cfg, device, False)
        import deepspeed

        ensure_process_group(device)
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "rlhf-ray" / "torch_extensions"))
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
        micro = micro_batch or max(1, cfg.batch_size // world)
        engine, opt, _, sched = deepspeed.initialize(
            model=model, optimizer=opt,
            lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, sched_fn),
            config=deepspeed_config(cfg, micro), dist_init_required=False,
        )
        return cls(engine, model, opt, sched, cfg, device, True)

    def backward(self, loss: torch.Tensor) -> None:
        if self.deepspeed:
            self.module.backward(loss)
        else:
            loss.backward()

    def step(self) -> float:
        """Clip, step optimizer and schedule, zero grads; returns the gradient norm (nan if unknown)."""
        if self.deepspeed:
            self.module.step()
            norm = self.module.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        norm = float("nan")
        if self.cfg.grad_clip > 0:
            norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    @torch.no_grad()
    def copy_weights_to(self, replica: nn.Module) -> nn.Module:
        """``replica`` (a plain copy of the module made before the engine, on this rank's device)
        holding the engine's current full weights; a collective under ZeRO-3 (every rank calls).

        Under ZeRO-3 a rank holds a slice of each weight, gathered by DeepSpeed's hooks around a
        submodule's own forward only; validation's KV-cached ranking reads weights directly (the
        item rows of ``lm_head``) and calls submodules piecemeal, and on the engine's module it
        failed on empty tensors. The replica has no hooks and every weight whole."""
        own = dict(self.model.named_parameters())
        zero3 = self.deepspeed and self.cfg.zero_stage == 3
        if zero3:
            import deepspeed
        for name, p in replica.named_parameters():  # one weight at a time, in the same order on every rank
            with deepspeed.zero.GatheredParameters([own[name]]) if zero3 else nullcontext():
                p.copy_(own[name].detach())
        return replica

    def full_state_dict(self) -> dict | None:
        """Consolidated fp32 weights, each tensor owning its own memory (a collective under ZeRO-3:
        call on every rank).

        Returns the state dict on rank 0 (None elsewhere under ZeRO-3). Every value is a copy:
        DeepSpeed keeps a rank's parameters as views into one flat buffer, and pickling a view
        (``ray.put``, what the PPO weight sync does) writes its whole storage. Without the copy a
        2-layer policy's 28 tensors went out as 28 copies of the 2.8 MB buffer, 78 MB a sync.
        """
        if self.deepspeed and self.cfg.zero_stage == 3:
            sd = self.module._zero3_consolidated_16bit_state_dict()
            return None if sd is None else {k: owned_fp32(v) for k, v in sd.items()}
        return {k: owned_fp32(v) for k, v in self.model.state_dict().items()}

    # -- resume -----------------------------------------------------------------
    def save_state(self, directory: str | Path, tag: str = "state") -> None:
        """Model + optimizer + scheduler state for exact resume (every rank calls)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.deepspeed:
            self.module.save_checkpoint(str(d), tag=tag)
            return
        rank, _ = rank_world()
        if rank == 0:
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict()}, d / f"{tag}.pt")

    def load_state(self, directory: str | Path, tag: str = "state") -> None:
        d = Path(directory)
        if self.deepspeed:
            path, _ = self.module.load_checkpoint(str(d), tag=tag)
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed state {tag!r} under {d}")
            return
        blob = torch.load(d / f"{tag}.pt", map_location=self.device, weights_only=True)
        self.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
