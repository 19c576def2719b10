"""Which validated policy PPO keeps for export (``ppo.select``, ``ppo.hack_stop``).

    keeper = Keeper.for_config(cfg)
    keeper.offer(iteration, validation, flagged=alert is not None)   # after every validation
    keeper.iteration                                                 # the validation it keeps, or None

``select: last`` keeps the newest validation the reward-hacking monitor did not flag;
``select: best`` the one with the highest ``val/<select_metric>`` among those (ties: the
earlier). The baseline validation (iteration 0, the SFT start) is a candidate: a run that
never beats its start exports its start, and says so. The keeper holds the policy's weights
only when the export may differ from the final weights (``select: best``, or ``hack_stop``,
whose stop exports the kept policy instead of the flagged one): then the orchestrator keeps an
ObjectRef to the weights validated (what the rollout actors loaded), writes them into every
resumable state beside the engines (``kept/``) and reads them back on resume.

The choice is made on the validation users the monitor watches (``ppo.eval_users``); a
figure of the chosen policy on those same users is biased upward (the winner's curse), so
comparisons with it are made on other users (the whole validation split, or test).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class Keeper:
    select: str  # "last" | "best"
    metric: str  # the validation key maximised, e.g. "val/page_ndcg@10"
    holds_weights: bool  # whether the orchestrator must keep the weights of the kept validation
    iteration: int | None = None  # the kept validation's iteration (0: the SFT start)
    value: float | None = None  # its metric
    offered: int = 0  # validations offered
    refused: int = 0  # validations the monitor flagged (never kept)

    @classmethod
    def for_config(cls, cfg) -> "Keeper":
        """From a :class:`~rlhf_ray.config.PPOConfig`."""
        return cls(select=cfg.select, metric=f"val/{cfg.select_metric}",
                   holds_weights=cfg.eval_every > 0 and (cfg.select == "best" or cfg.hack_stop))

    def offer(self, iteration: int, validation: dict, flagged: bool = False) -> bool:
        """Whether this validation becomes the kept one (its weights are then to be kept)."""
        self.offered += 1
        if flagged:
            self.refused += 1
            return False
        v = float(validation.get(self.metric, float("nan")))
        if self.select == "best" and not (math.isfinite(v) and (self.iteration is None or v > self.value)):
            return False
        self.iteration, self.value = int(iteration), v
        return True

    def exports_kept(self, completed: int, stopped_by_monitor: bool) -> bool:
        """Whether the export is the kept policy rather than the weights after ``completed`` iterations."""
        if self.iteration is None or self.iteration == completed:
            return False
        return self.select == "best" or stopped_by_monitor

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "Keeper":
        return cls(**state)
