"""Reward-hacking monitor: the reward goes up while what it stands for goes down.

At every validation v (after the baseline v0, taken before any update):

    reward_gain = mean reward since the last validation - baseline reward (the first iteration's)
    drop(m)     = (m_v0 - m_v) / |m_v0|          for m in (val NDCG@10, val page ILD)
    flag        = reward_gain > 0  and  max_m drop(m) > threshold

A flag is logged with the numbers; the controller stops the run if configured to.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

WATCHED = ("val/ndcg@10", "val/page_ild")


@dataclass
class HackingMonitor:
    threshold: float
    baseline_reward: float | None = None
    baseline: dict = field(default_factory=dict)  # metric -> value at the first validation
    window: list = field(default_factory=list)  # rewards since the last validation
    alerts: list = field(default_factory=list)

    def observe_reward(self, reward: float) -> None:
        if self.baseline_reward is None:
            self.baseline_reward = float(reward)
        self.window.append(float(reward))

    def observe_validation(self, iteration: int, metrics: dict) -> dict | None:
        """Returns the alert (and records it) when the run looks like it is hacking the reward."""
        if not self.baseline:
            self.baseline = {k: float(metrics[k]) for k in WATCHED if k in metrics}
            self.window = []
            return None
        recent = sum(self.window) / len(self.window) if self.window else None
        self.window = []
        if recent is None or self.baseline_reward is None:
            return None
        gain = recent - self.baseline_reward
        drops = {}
        for k, v0 in self.baseline.items():
            v = float(metrics.get(k, float("nan")))
            if math.isfinite(v) and math.isfinite(v0) and v0 != 0:
                drops[k] = (v0 - v) / abs(v0)
        worst = max(drops.items(), key=lambda kv: kv[1], default=(None, 0.0))
        if gain > 0 and worst[1] > self.threshold:
            alert = {"iteration": iteration, "reward_gain": gain, "metric": worst[0], "drop": worst[1],
                     "baseline": self.baseline[worst[0]], "now": float(metrics[worst[0]])}
            self.alerts.append(alert)
            return alert
        return None

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "HackingMonitor":
        return cls(**state)
