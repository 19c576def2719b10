"""RewardActor: scores pages with a :class:`rlhf_ray.rewards.RewardFn`.

Sources: a reward checkpoint directory (``ModelReward``, the trained mixed-grained
model, alpha from the config or the checkpoint), ``"rule"`` (``RuleReward`` on the
prepared data), or, from Python, any zero-argument factory returning a RewardFn.
Every answer (:class:`actors.experience.RewardScores`) carries how the function's
``total`` splits into page and item parts (:class:`actors.experience.RewardMix`), which
the controller needs to spread the reward over page slots; the actor checks that split
on every batch.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import torch

from actors.experience import PromptBatch, RewardMix, RewardScores, Rollout
from actors.group import BaseActor
from rlhf_ray.config import PPORewardConfig
from rlhf_ray.errors import UserError


def reward_mix(fn) -> RewardMix:
    """Mixed-grained rewards (an ``alpha`` attribute): total = alpha * page + (1 - alpha) * mean_t item_t.
    Otherwise (RuleReward): total = page + sum_t item_t."""
    alpha = getattr(fn, "alpha", None)
    if alpha is not None:
        return RewardMix(page_coef=float(alpha), item_coef=1.0 - float(alpha), item_mode="mean")
    return RewardMix(page_coef=1.0, item_coef=1.0, item_mode="sum")


def build_reward(source: str, cfg: PPORewardConfig, data_dir: str, device: str = "cpu"):
    """A RewardFn from ``source``: "rule" or a reward checkpoint directory, clipped to ``cfg.clip``
    and, with ``cfg.members``, averaged with those checkpoints (less ``cfg.uncertainty_coef`` times
    their spread, :class:`rlhf_ray.rewards.EnsembleReward`); with ``cfg.hit_weight`` /
    ``cfg.diversity_weight``: plus hits on the held-out training positives and the page's category
    entropy, :class:`rlhf_ray.rewards.HitBonus`, the model's part scaled by ``cfg.model_weight``."""
    from rlhf_ray.rewards import EnsembleReward, HitBonus, ModelReward, RuleReward
    from rlhf_ray.stages.common import check_compatible, open_data

    prepared = open_data(data_dir)
    if source == "rule":
        return RuleReward(prepared)
    models = []
    for path in [source, *cfg.members]:
        m = ModelReward.from_checkpoint(path, alpha=cfg.alpha, device=device, clip=cfg.clip)
        if m.catalog is not None:
            check_compatible(m.catalog, prepared, path)
        models.append(m)
    fn = models[0] if len(models) == 1 else EnsembleReward(models, uncertainty=cfg.uncertainty_coef)
    if cfg.hit_weight > 0 or cfg.diversity_weight > 0 or cfg.model_weight != 1.0:
        mix, w = reward_mix(fn), cfg.model_weight
        return HitBonus(fn, prepared, cfg.hit_weight, w * mix.page_coef, w * mix.item_coef, mix.item_mode,
                        cfg.diversity_weight, diversity_slots=cfg.diversity_credit == "slot")
    return fn


class RewardActor(BaseActor):
    def setup(self, source: str | Callable, cfg: PPORewardConfig, data_dir: str) -> dict:
        self.fn = source() if callable(source) else build_reward(source, cfg, data_dir, self.device())
        self.mix = reward_mix(self.fn)
        return {"kind": type(self.fn).__name__, "mix": asdict(self.mix),
                "max_history": getattr(self.fn, "max_history", None)}

    @torch.no_grad()
    def score(self, batch: PromptBatch, rollout: Rollout) -> RewardScores:
        """The reward of each page of this rank's rows (float32 CPU tensors) and the mix."""
        pages = rollout.pages
        out = self.fn(batch.histories, pages, user_idx=[int(u) for u in batch.user_idx])
        page, items, total = (t.detach().float().cpu() for t in (out.page, out.items, out.total))
        mask = pages >= 0
        items = items * mask
        recon = self.mix.page_coef * page + (self.mix.item_weights(mask) * items).sum(-1)
        if not torch.allclose(recon, total, rtol=1e-4, atol=1e-4):
            raise UserError(f"reward {type(self.fn).__name__}: total != {self.mix} applied to page and items "
                            f"(max gap {float((recon - total).abs().max()):.3g}); PPO cannot spread it over slots")
        return RewardScores(page, items, total, self.mix)
