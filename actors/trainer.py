"""What the two training roles (policy, critic) share: an Engine per rank, the
minibatch loop over this rank's shard, resumable state, and weight checksums.

Each rank holds B / world rows of the experience (and of the iteration's prompt batch, whose
prompts and seen-item mask it builds once per call) and runs ``epochs`` seeded
permutations of them in minibatches of ``train.batch_size / world`` rows, so every
rank takes the same number of forward/backward passes (ZeRO-3 needs all ranks in
each one); the engine averages gradients across ranks, so one step is a step on a
global minibatch of ``train.batch_size`` rows.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Callable

import torch
from torch import nn

from actors.batching import take, to_device
from actors.experience import Experience, PromptBatch, minibatches
from actors.group import BaseActor
from rlhf_ray.config import TrainConfig
from rlhf_ray.engine import Engine, backend_for, resolve_device
from rlhf_ray.generation import Prompts
from rlhf_ray.seeding import seed as derive_seed


class TrainerActor(BaseActor):
    distributed = True

    def _start_engine(self, module: nn.Module, train: TrainConfig, total_steps: int) -> Engine:
        device = resolve_device(train)
        self.init_process_group(backend_for(device))
        self.train_cfg = train
        self.engine = Engine.create(module, train, total_steps=max(1, total_steps),
                                    micro_batch=max(1, train.batch_size // self.world))
        self.engine.train(True)  # dropout is off (p = 0), so train mode is deterministic
        return self.engine

    def _inputs(self, batch: PromptBatch):
        """What the loss reads of this rank's prompt rows (a batch, :mod:`actors.batching`): the
        prompts' tokens and seen-item mask, built here once per call. A role that reads more
        (the policy's PPO-ptx target pages) returns a tuple."""
        return batch.prompts(self.vocab)

    def _fit(self, batch: PromptBatch, exp: Experience, epochs: int, seed: int,
             loss_fn: Callable[[Prompts, Experience], tuple[torch.Tensor, dict]]) -> dict[str, float]:
        """Minibatch steps over this rank's shard (``batch`` and ``exp``: the same rows); mean stats
        over the steps. ``loss_fn`` gets the minibatch's rows of :meth:`_inputs` and of ``exp``."""
        mb = max(1, self.train_cfg.batch_size // self.world)
        rank_seed = derive_seed(seed, "rank", self.rank)
        prompts = self._inputs(batch)
        sums: dict[str, float] = {}
        clock = {"batch": 0.0, "forward": 0.0, "backward": 0.0, "step": 0.0}  # seconds per phase, summed
        steps = 0
        for idx in minibatches(len(exp), mb, epochs, rank_seed):
            t0 = time.perf_counter()
            p, m = to_device((take(prompts, idx), take(exp, idx)), self.engine.device)
            t1 = time.perf_counter()
            loss, stats = loss_fn(p, m)
            t2 = time.perf_counter()
            self.engine.backward(loss)
            t3 = time.perf_counter()
            stats["grad_norm"] = self.engine.step()
            t4 = time.perf_counter()
            for k, dt in zip(clock, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                clock[k] += dt
            steps += 1
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        out = {k: v / max(steps, 1) for k, v in sums.items()}
        out.update(steps=float(steps), lr=self.engine.lr, **{f"time_{k}_s": v for k, v in clock.items()})
        return out

    # -- resumable state -----------------------------------------------------------
    def save_state(self, directory: str) -> None:
        """Model + optimizer + schedule (DeepSpeed's own format under ZeRO); every rank calls.
        ``directory``: a path on storage every node sees, or a storage URI (each rank publishes its
        own files from its node)."""
        from rlhf_ray.storage import staged

        with staged(directory, marker=None) as local:
            self.engine.save_state(local, tag="state")

    def load_state(self, directory: str) -> None:
        from rlhf_ray.storage import fetched

        with fetched(directory) as local:
            self.engine.load_state(local, tag="state")

    # -- consistency checks ------------------------------------------------------------
    def _gathered(self):
        """Full parameters on this rank for the duration (ZeRO-3 gathers the partitions)."""
        if self.engine.deepspeed and self.train_cfg.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.engine.model.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def checksums(self) -> dict[str, str]:
        """{parameter name: sha256 of its fp32 bytes} of the full model (a collective under ZeRO-3)."""
        with self._gathered():
            return {n: hashlib.sha256(p.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
                    for n, p in self.engine.model.named_parameters()}
