"""Reward-hacking monitor: the reward goes up while what it stands for goes down.

At every validation v (after the baseline v0, taken before any update):

    reward_gain = mean reward since the last validation - baseline reward (the first iteration's)
    drop(m)     = (m_v0 - m_v) / |m_v0|          for m in (val NDCG@10, val page ILD)
    flag        = reward_gain > 0  and  max_m drop(m) > threshold  (and that drop is real, below)

A drop is real when the validation's per-user values come with it: the paired 95% bootstrap
interval of (m_v - m_v0) over the same users must lie below 0 (``rlhf_ray.stats.paired_diff``).
On a few hundred validation users a 5% fall of NDCG@10 is within noise (the interval of a
difference of two 300-user means is about +-10% of NDCG@10 here), and an alert on noise is no
alert. Without per-user values (an old state, a caller that has none) the threshold alone decides.
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
    baseline_users: dict = field(default_factory=dict)  # metric -> per-user values at the first validation
    dismissed: int = 0  # drops past the threshold whose interval included 0 (noise, not flagged)

    def observe_reward(self, reward: float) -> None:
        if self.baseline_reward is None:
            self.baseline_reward = float(reward)
        self.window.append(float(reward))

    def observe_validation(self, iteration: int, metrics: dict, per_user: dict | None = None) -> dict | None:
        """Returns the alert (and records it) when the run looks like it is hacking the reward.

        ``per_user``: metric -> per-user values (same users, same order at every validation)."""
        per_user = per_user or {}
        if not self.baseline:
            self.baseline = {k: float(metrics[k]) for k in WATCHED if k in metrics}
            self.baseline_users = {k: list(map(float, per_user[k])) for k in WATCHED if k in per_user}
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
        if not (gain > 0 and worst[1] > self.threshold):
            return None
        interval = self._interval(worst[0], per_user.get(worst[0]))
        if interval is not None and interval["verdict"] != "lower":
            self.dismissed += 1
            return None
        alert = {"iteration": iteration, "reward_gain": gain, "metric": worst[0], "drop": worst[1],
                 "baseline": self.baseline[worst[0]], "now": float(metrics[worst[0]])}
        if interval is not None:
            alert.update(diff_lo=interval["lo"], diff_hi=interval["hi"], users=interval["n"])
        self.alerts.append(alert)
        return alert

    def _interval(self, metric: str, now) -> dict | None:
        """Paired bootstrap interval of now - baseline over users, when both have per-user values."""
        base = self.baseline_users.get(metric)
        if now is None or base is None or len(now) != len(base):
            return None
        from rlhf_ray.stats import paired_diff

        d = paired_diff(list(map(float, now)), base)
        return None if d["n"] == 0 else d

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "HackingMonitor":
        return cls(**state)
