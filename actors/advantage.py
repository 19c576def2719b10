"""The advantage step as a Ray task, next to the data instead of on the driver.

    exp, stats = advantage(rollout, scores, ref, values, ledger, kl_coef=0.05, gamma=1.0, lam=0.95, ...)
    # exp: a Sharded Experience (B rows, left in the object store); stats: the scalars, fetched

The task reads the (B, K) answers of the rollout, reward, reference and critic groups from the
object store (they are :class:`~actors.batching.Sharded` batches; nothing passes through the
driver), concatenates them in row order and runs :func:`actors.experience.experience` on the whole
batch: KL, token rewards, GAE and whitening, the same function on the same tensors as when the
driver did it, so the numbers are bit for bit those of before. The Experience stays in the object
store for the policy and critic groups; only :func:`~actors.experience.experience_stats` (what the
controller logs and feeds the KL controller) and the task's own compute time come back.

The task asks for no CPU (``num_cpus=0``): its work is O(B x K), and a reservation would compete
with the role actors' placement groups, which may hold every CPU of the cluster.
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


@lru_cache(maxsize=1)
def _task():
    import ray

    return ray.remote(num_cpus=0, num_returns=2)(_assemble)


def advantage(rollout: Sharded, scores: Sharded, ref: Sharded, values: Sharded, ledger: Ledger,
              **kw) -> tuple[Sharded, dict]:
    """Assemble the Experience in a task; returns it as a Sharded batch (not fetched) and its stats
    (fetched through ``ledger``). ``kw``: kl_coef, kl_estimator, gamma, lam, whiten_advantages."""
    exp_ref, stats_ref = _task().remote(rollout, scores, ref, values, kw)
    stats = ledger.get(stats_ref)
    return Sharded([exp_ref], [rollout.rows]), stats
