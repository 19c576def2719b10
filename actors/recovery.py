"""A PPO run survives a lost actor or node (``PPOConfig.max_restarts`` times).

When a call to a role fails because an actor died (killed, out of memory, its node lost),
the controller (:class:`~actors.orchestrator.PPOOrchestrator`) calls :meth:`Recovery.recover`,
which

 1. finds the role groups that lost a rank: every rank of every group is probed
    (:meth:`~actors.group.ModelGroup.lost`); a group with a rank that is dead or does not
    answer is lost whole (its live ranks may be blocked in a collective with the dead one);
 2. kills those groups and starts them again from the SFT checkpoint, wherever the cluster
    has room (a group's own placement group is made anew; bundles of a shared one that sat
    on a lost node are placed again by Ray);
 3. rolls every stateful part back to the last complete state in ``OUT.state`` (policy and
    critic engines, KL controller, monitor, RNG, history), or to the start of the loop when
    no state was saved yet (the trained groups then start again from SFT);
 4. returns the iteration to continue from. Iterations after that state are computed again
    and reproduce what they did (pages, minibatch order and updates are seeded by iteration).

After ``max_restarts`` recoveries (a recovery interrupted by another loss counts too) the next
loss stops the run with :class:`RestartsExhausted` (an :class:`ActorDied`) naming the role, rank,
node and cause. Errors that are not a lost actor (a bug, bad input)
are never retried.
"""
from __future__ import annotations

import time

from actors.group import ActorDied
from actors.monitor import HackingMonitor
from actors.selection import Keeper
from actors.state import rng_state, set_rng_state

TRAINED = ("policy", "critic")  # roles with state: rolled back on every recovery


class RestartsExhausted(ActorDied):
    """A role was lost once more than ``max_restarts`` allows (names role, rank, node and cause)."""


def is_loss(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) says an actor, its worker process or its node is gone."""
    from ray.exceptions import (LocalRayletDiedError, NodeDiedError, ObjectLostError, RayActorError,
                                WorkerCrashedError)

    lost = (ActorDied, RayActorError, ObjectLostError, NodeDiedError, WorkerCrashedError, LocalRayletDiedError)
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, lost):
            return True
        err = getattr(err, "cause", None) or err.__cause__
    return False


class Recovery:
    def __init__(self, orch, max_restarts: int):
        self.orch = orch
        self.max_restarts = max_restarts
        self.restarts: list[dict] = []  # one record per recovery: cause, roles restarted, iterations
        self._start: dict | None = None

    def mark_start(self, iteration: int) -> None:
        """The controller's state where the loop starts: what a recovery returns to while no state
        is saved (after the baseline validation, so the monitor keeps its baseline)."""
        o = self.orch
        self._start = {"iteration": iteration, "kl": o.kl_ctl.state_dict(), "monitor": o.monitor.state_dict(),
                       "rng": rng_state(), "history": list(o.history), "validations": list(o.validations),
                       "keeper": o.keeper.state_dict()}

    def recover(self, err: BaseException, iteration: int) -> int:
        """Restart the lost groups and roll back; returns the iteration to continue from.
        Re-raises ``err`` when it is not a lost actor; raises :class:`ActorDied` when out of restarts.
        A loss while recovering (another actor or node gone meanwhile) takes the next restart."""
        while True:
            if not is_loss(err):
                raise err
            try:
                return self._recover_once(err, iteration)
            except RestartsExhausted:
                raise
            except Exception as again:  # noqa: BLE001  lost again mid-recovery: is_loss decides above
                err = again

    def _recover_once(self, err: BaseException, iteration: int) -> int:
        o = self.orch
        t0 = time.perf_counter()
        lost = {role: why for role, g in o.groups.items() if (why := g.lost()) is not None}
        cause = next(iter(lost.values()), None) or err
        if len(self.restarts) >= self.max_restarts:
            raise RestartsExhausted(f"{cause} (gave up after {len(self.restarts)} restart(s): ppo.max_restarts = "
                                    f"{self.max_restarts})") from err
        record = {"iteration": iteration + 1, "cause": str(cause)}
        self.restarts.append(record)  # counted now: a restart that fails itself still uses one up
        state = o.state.latest()
        restart = set(lost) | (set() if state is not None else set(TRAINED))  # no state: trained roles from SFT
        o.log(f"[ppo] lost during iteration {iteration + 1}: {cause}; restarting "
              f"{', '.join(sorted(restart)) or 'nothing (all roles answer)'} and continuing from "
              f"{'the state ' + str(state) if state is not None else 'the start'} "
              f"(restart {len(self.restarts) + 1} of {self.max_restarts})")
        specs = {s.role: s for s in o.role_specs()}
        for role in restart:
            o.groups[role].kill()
        for role in restart:
            o.groups[role] = o.make_group(specs[role])
        pending = {role: o.setup_group(role) for role in restart}
        for role, refs in pending.items():
            o.groups[role].get(refs)
        done = o.restore() if state is not None else self._rewind()
        o._dirty = True  # rollouts reload the policy they must sample from
        if o.logger is not None:
            o.logger.rewrite(o.records())
        record.update(roles=sorted(restart), resumed_from=done, recomputed=iteration - done,
                      seconds=time.perf_counter() - t0)
        return done

    def _rewind(self) -> int:
        """Back to :meth:`mark_start` (the trained roles were started again from SFT)."""
        o, s = self.orch, self._start
        assert s is not None, "mark_start() runs before the loop"
        o.kl_ctl.load_state_dict(s["kl"])
        o.monitor = HackingMonitor.from_state(s["monitor"])
        set_rng_state(s["rng"])
        o.history, o.validations = list(s["history"]), list(s["validations"])
        o.keeper, o.kept_weights, o._published = Keeper.from_state(s["keeper"]), None, None
        if o.keeper.holds_weights and o.keeper.iteration is not None:
            if o.keeper.iteration == s["iteration"] == 0:  # the SFT start, which the restarted policy holds again
                o.kept_weights = o.current_weights()
            else:  # weights held by a lost actor, never saved: the next validation is kept instead
                o.keeper.iteration = o.keeper.value = None
        return s["iteration"]
