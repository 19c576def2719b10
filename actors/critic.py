"""CriticActor: one rank of the value model (SFT backbone + value head, clipped value loss).

    L_V = 0.5 * masked_mean( max((V - R)^2, (V_clip - R)^2) ),
    V_clip = V_old + clip(V - V_old, -eps, eps)                 (losses.value_loss)

Both calls read this rank's rows of the iteration's prompt batch from the object store and build
the prompts (tokens, seen-item mask) here: ``values`` with the rollout's pages, ``train`` with the
Experience the advantage task left there (:mod:`actors.advantage`).
"""
from __future__ import annotations

import torch

from actors.experience import Experience, PromptBatch, Rollout, Values
from actors.models import CriticModel, load_policy
from actors.trainer import TrainerActor
from rlhf_ray.config import PPOCriticConfig
from rlhf_ray.generation import Prompts
from rlhf_ray.losses import value_loss


class CriticActor(TrainerActor):
    def setup(self, sft_dir: str, cfg: PPOCriticConfig, total_steps: int, seed: int = 0) -> dict:
        self.cfg = cfg
        ck = load_policy(sft_dir)
        self.vocab = ck.vocab
        self.critic = CriticModel(ck.model, ck.vocab, seed=seed)
        self._start_engine(self.critic, cfg.train, total_steps)
        return {"params": sum(p.numel() for p in self.critic.parameters()), "device": str(self.engine.device)}

    @torch.no_grad()
    def values(self, batch: PromptBatch, rollout: Rollout) -> Values:
        """V(s_t) of this rank's rows (0 at padding); every rank of a ZeRO-3 group must call."""
        return Values(self.engine.module(batch.prompts(self.vocab), rollout.pages).float().cpu())

    def _loss(self, prompts: Prompts, m: Experience):
        v = self.engine.module(prompts, m.pages)
        return value_loss(v, m.values, m.returns, m.mask, self.cfg.value_clip)

    def train(self, batch: PromptBatch, exp: Experience, epochs: int, seed: int) -> dict[str, float]:
        """Value epochs over this rank's shard; mean stats (value_loss, vf_clipfrac, value_mean, ...)."""
        return self._fit(batch, exp, epochs, seed, self._loss)
