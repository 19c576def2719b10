"""The advantage step in a long-lived zero-CPU actor, next to the data instead of on the driver.

    step = AdvantageStep()
    exp, stats = step(rollout, scores, ref, values, ledger, kl_coef=0.05, gamma=1.0, lam=0.95, ...)
    # exp: a Sharded Experience (B rows, left in the object store); stats: the scalars, fetched
    step.close()

The actor reads the (B, K) answers of the rollout, reward, reference and critic groups from the
object store (they are :class:`~actors.batching.Sharded` batches; nothing passes through the
driver), concatenates them in row order and runs :func:`actors.experience.experience` on the whole
batch: KL, token rewards, GAE and whitening, the same function on the same tensors as when the
driver did it, so the numbers are bit for bit those of before. The Experience stays in the object
store for the policy and critic groups; only :func:`~actors.experience.experience_stats` (what the
controller logs and feeds the KL controller) and the task's own compute time come back.

The actor asks for no CPU (``num_cpus=0``): its work is O(B x K), and a reservation would compete
with the role actors' placement groups, which may hold every CPU of the cluster. It is an actor,
not a task: Ray kills idle task workers beyond its CPU count within a second, and with every CPU
held by the roles' placement groups each iteration's task started a fresh worker and imported
torch again (2.35 s of a 4.1 s iteration on 2 cores; ``bench/ppo_before_after.py``). The actor's
process stays up for the run. Lost (its node gone), it is started again on the next call.
"""
from __future__ import annotations

import time
from functools import lru_cache

from actors.batching import Sharded
from actors.ledger import Ledger


def _assemble(rollout: Sharded, scores: Sharded, ref: Sharded, values: Sharded, kw: dict):
    from actors.experience import experience, experience_stats

    parts = [s.fetch() for s in (rollout, scores, ref, values)]
    t0 = time.perf_counter()
    exp = experience(*parts, **kw)
    stats = experience_stats(exp)
    stats["time/assemble_s"] = time.perf_counter() - t0  # the arithmetic alone (no fetching)
    return exp, stats


class _Worker:
    """The actor's body: one method, the same function the driver used to run."""

    def assemble(self, rollout: Sharded, scores: Sharded, ref: Sharded, values: Sharded, kw: dict):
        return _assemble(rollout, scores, ref, values, kw)

    def pid(self) -> int:
        import os

        return os.getpid()


@lru_cache(maxsize=1)
def _actor_cls():
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(_Worker)


class AdvantageStep:
    """The advantage actor of one PPO run: started on first use, reused by every iteration."""

    def __init__(self):
        self.actor = None

    def __call__(self, rollout: Sharded, scores: Sharded, ref: Sharded, values: Sharded, ledger: Ledger,
                 **kw) -> tuple[Sharded, dict]:
        """Assemble the Experience in the actor; returns it as a Sharded batch (not fetched) and its stats
        (fetched through ``ledger``). ``kw``: kl_coef, kl_estimator, gamma, lam, whiten_advantages."""
        from ray.exceptions import RayActorError

        try:
            return self._assemble(rollout, scores, ref, values, ledger, kw)
        except RayActorError:  # lost with its node: start another and redo this step once
            self.actor = None
            return self._assemble(rollout, scores, ref, values, ledger, kw)

    def _assemble(self, rollout: Sharded, scores: Sharded, ref: Sharded, values: Sharded, ledger: Ledger,
                  kw: dict) -> tuple[Sharded, dict]:
        if self.actor is None:
            self.actor = _actor_cls().remote()
        exp_ref, stats_ref = self.actor.assemble.options(num_returns=2).remote(rollout, scores, ref, values, kw)
        return Sharded([exp_ref], [rollout.rows]), ledger.get(stats_ref)

    def close(self) -> None:
        if self.actor is not None:
            import ray

            ray.kill(self.actor)
            self.actor = None
