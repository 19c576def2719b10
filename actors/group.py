"""One actor-group abstraction: N Ray actors of one role, one torch.distributed group.

    group = ModelGroup(PolicyActor, "policy", ranks=2, num_cpus=0.25, placement=placement)
    group.call("setup", sft_dir, cfg, total_steps)          # every rank; waits; errors name the rank
    refs = group.run_all("state_dict")                      # fan out: list[ObjectRef], rank order
    out = group.dispatch("values", batch, rollout)          # split rows over ranks, call; results stay
                                                            # in the object store (a Sharded batch)
    values = group.gather(out)                              # fetch and concatenate, rank order
    values = group.call_sharded("values", batch, rollout)   # split, call, gather, concatenate at once

Batches handed to ``dispatch`` are local values (split here, rank r sent its rows) or
:class:`~actors.batching.Sharded` batches another group returned (rank r is sent a
reference to its rows and fetches them itself: the driver never holds the data).
Everything the group fetches for the caller (:meth:`ModelGroup.get`, :meth:`~ModelGroup.gather`,
:meth:`~ModelGroup.call`) is counted in its :class:`~actors.ledger.Ledger` (bytes, tensors).

Start-up of a role that trains (``distributed``, the rendezvous): rank 0 starts
first and publishes its node IP and a free port; ranks 1..N-1 start knowing them;
every rank then calls ``init_process_group`` at once with the backend its
TrainConfig implies (gloo on CPU, NCCL on GPU: :func:`rlhf_ray.engine.backend_for`).
Each rank is one process, so each group is that process's default group. Inference
roles (rollout, reference, reward) need no group: their ranks start together.

Placement: every rank sits on a bundle of a placement group: the group's own
(``ranks`` bundles of ``num_cpus``/``num_gpus``, PACK or SPREAD) or bundles of a
shared one (:mod:`actors.placement`), where fractional ``num_cpus``/``num_gpus``
let several roles share a bundle (colocation).

Failures: :meth:`ModelGroup.get` waits on all ranks at once and reports the first
failure, so a dead rank is named even while its peers block in a collective. An
actor that died (OOM kill, ``ray.kill``, lost node) raises :class:`ActorDied`
naming the role, rank, node and Ray's cause.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

from actors.batching import Sharded, bounds, concat, resolve, rows, take
from actors.ledger import Ledger
from rlhf_ray.errors import UserError

#: how long the group's rendezvous store waits for every rank
STORE_TIMEOUT_S = 1800.0


class ActorDied(UserError):
    """A role actor died (killed, out of memory, node lost): names role, rank, node and cause."""


@dataclass
class Placement:
    """Where each rank of a group goes: a placement group and one bundle index per rank."""

    pg: Any  # ray.util.placement_group.PlacementGroup
    bundles: list[int]  # (ranks,) bundle index of rank r


class BaseActor:
    """The rank-side half of the group protocol; every role actor subclasses it.

    ``distributed``: the role trains, so its ranks form a process group and take
    equal shards (ZeRO-3 needs every rank in every forward).
    """

    distributed = False

    def __init__(self, role: str, rank: int, world: int, master: tuple[str, int] | None = None):
        self.role, self.rank, self.world = role, rank, world
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0")
        if master is not None:
            self._set_master(*master)

    def _set_master(self, addr: str, port: int) -> None:
        self.master = (addr, int(port))
        os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port))

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0: this node's IP and the port of the group's store, published to the other ranks.

        The store (torch's TCPStore, the group's rendezvous) is opened here on a port the OS
        picks and held until the group forms: a port merely found free and bound later could be
        taken in between by another run's group on the same machine (seen: EADDRINUSE with three
        pipelines' PPO starting at once)."""
        import ray
        import torch.distributed as dist

        ip = ray.util.get_node_ip_address()
        self._store = dist.TCPStore(ip, 0, self.world, True, timeout=timedelta(seconds=STORE_TIMEOUT_S),
                                    wait_for_workers=False)
        port = int(self._store.port)
        self._set_master(ip, port)
        return ip, port

    def node(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {"ip": ray.util.get_node_ip_address(), "pid": os.getpid(), "node_id": ctx.get_node_id()}

    def init_process_group(self, backend: str, timeout_s: float = 1800.0) -> None:
        """Join this group's torch.distributed group (every rank calls it at once)."""
        import torch.distributed as dist

        if dist.is_initialized():
            return
        addr, port = self.master
        store = getattr(self, "_store", None)  # rank 0 holds the server since rendezvous()
        if store is None:
            store = dist.TCPStore(addr, port, self.world, False, timeout=timedelta(seconds=timeout_s))
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world,
                                timeout=timedelta(seconds=timeout_s))

    def dispatch(self, method: str, args: tuple, kwargs: dict):
        """Rank side of :meth:`ModelGroup.dispatch`: fetch the rows this rank was sent references
        to, then run ``method`` on them."""
        return getattr(self, method)(*[resolve(a) for a in args], **kwargs)

    @staticmethod
    def device() -> str:
        """Where an inference role puts its model: the GPU Ray gave this actor, else the CPU."""
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def _short(err: BaseException) -> str:
    """Ray's cause in one line: its message without the actor-id / namespace boilerplate."""
    keep = [ln.strip() for ln in str(err).splitlines()
            if ln.strip() and not ln.strip().startswith(("class_name:", "actor_id:", "pid:", "namespace:", "ip:"))]
    return " ".join(keep) or type(err).__name__


class ModelGroup:
    """N Ray actors of ``actor_cls`` (a :class:`BaseActor` subclass) playing ``role``."""

    def __init__(self, actor_cls: type, role: str, ranks: int = 1, *, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, resources: dict[str, float] | None = None,
                 placement: Placement | None = None, strategy: str = "PACK", ready_timeout_s: float = 300.0,
                 ledger: Ledger | None = None):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if ranks < 1:
            raise ValueError(f"{role}: a group needs >= 1 rank, got {ranks}")
        self.role, self.world = role, ranks
        self.ledger = ledger if ledger is not None else Ledger()  # what the caller fetches (actors.ledger)
        self.distributed = bool(getattr(actor_cls, "distributed", False))
        self._own_pg = None
        resources = dict(resources or {})  # custom resources (per actor): pin the role to nodes that have them
        if placement is None:
            bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {}), **resources}
            pg = placement_group([dict(bundle) for _ in range(ranks)], strategy=strategy,
                                 name=f"rlhf-ray-{role}-{uuid.uuid4().hex[:6]}")
            self._own_pg = pg
            wait_placement(pg, f"{role} ({ranks} x {bundle}, {strategy})", ready_timeout_s)
            placement = Placement(pg, list(range(ranks)))
        if len(placement.bundles) != ranks:
            raise ValueError(f"{role}: {len(placement.bundles)} bundles for {ranks} ranks")
        self.placement = placement
        remote_cls = ray.remote(actor_cls)

        def start(rank: int, master):
            return remote_cls.options(
                num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, max_restarts=0, max_concurrency=1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement.pg, placement_group_bundle_index=placement.bundles[rank]),
            ).remote(role, rank, ranks, master)

        self.actors: list = [start(0, None)]
        self._node_refs: list = [self.actors[0].node.remote()]
        master = self._wait_one(0, self.actors[0].rendezvous.remote()) if self.distributed else None
        self.actors += [start(r, master) for r in range(1, ranks)]
        self._node_refs += [a.node.remote() for a in self.actors[1:]]

    # -- fan-out ----------------------------------------------------------------
    def run_all(self, method: str, *args, **kwargs) -> list:
        """``method(*args, **kwargs)`` on every rank: ObjectRefs in rank order (not waited for)."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def dispatch(self, method: str, *batches, **kwargs) -> Sharded:
        """Split the rows (dim 0) of every positional batch over the ranks and call ``method`` on rank r
        with its rows; the results stay in the object store, returned as a :class:`Sharded` batch.

        A batch is a local value or a :class:`Sharded` one (see the module docstring). Training
        roles (``distributed``) need equal shards: rows that do not divide by the world size are
        an error rather than a ZeRO-3 hang.
        """
        sizes = {b.rows if isinstance(b, Sharded) else rows(b) for b in batches}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(f"{self.role}.{method}: batches of different or no rows {sorted(map(str, sizes))}")
        b = bounds(sizes.pop(), self.world, equal=self.distributed)

        def part(batch, r: int):
            return batch.slice(b[r], b[r + 1]) if isinstance(batch, Sharded) else take(batch, range(b[r], b[r + 1]))

        refs = [a.dispatch.remote(method, tuple(part(x, r) for x in batches), kwargs)
                for r, a in enumerate(self.actors)]
        return Sharded(refs, [b[r + 1] - b[r] for r in range(self.world)])

    def gather(self, sharded: Sharded) -> Any:
        """A :class:`Sharded` result fetched and concatenated in rank order (errors name the rank)."""
        return concat(self.get(sharded.refs))

    def call_sharded(self, method: str, *batches, **kwargs) -> Any:
        """Split, call, gather and concatenate: :meth:`dispatch` then :meth:`gather`."""
        return self.gather(self.dispatch(method, *batches, **kwargs))

    def run_sharded(self, method: str, *batches, **kwargs) -> list:
        """:meth:`dispatch`, as per-rank ObjectRefs (rank order)."""
        return self.dispatch(method, *batches, **kwargs).refs

    def call_rank(self, rank: int, method: str, *args, **kwargs) -> Any:
        """``method`` on one rank, waited for (errors name the rank)."""
        return self._wait_one(rank, getattr(self.actors[rank], method).remote(*args, **kwargs))

    def call(self, method: str, *args, **kwargs) -> list:
        """:meth:`run_all` and wait: results in rank order."""
        return self.get(self.run_all(method, *args, **kwargs))

    # -- waiting, with errors that name the rank ----------------------------------
    def get(self, refs: Sequence, timeout_s: float | None = None) -> list:
        """Results of per-rank ``refs`` (rank order); the first failure raises, naming its rank."""
        import ray

        index = {ref: r for r, ref in enumerate(refs)}
        pending = list(refs)
        out: dict = {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
            if not ready:
                raise TimeoutError(f"{self.role}: ranks {sorted(index[p] for p in pending)} did not answer "
                                   f"within {timeout_s} s")
            out[index[ready[0]]] = self._fetch(index[ready[0]], ready[0])
        values = [out[r] for r in range(len(refs))]
        self.ledger.record_get(list(refs), values)
        return values

    def lost(self, timeout_s: float = 10.0) -> ActorDied | None:
        """None when every rank answers within ``timeout_s``; else why not, naming the rank (a rank
        that died, or one stuck, e.g. in a collective with a dead peer, or busy past the timeout)."""
        import ray

        probes = {r: a.node.remote() for r, a in enumerate(self.actors)}
        ready, _ = ray.wait(list(probes.values()), num_returns=len(probes), timeout=timeout_s)
        for r, ref in probes.items():
            if ref not in ready:
                node = self.node(r)
                return ActorDied(f"{self.role} rank {r} (node {node['ip']}) did not answer within {timeout_s:.0f} s")
            try:
                self._wait_one(r, ref)
            except ActorDied as e:
                return e
        return None

    def node(self, rank: int) -> dict:
        """Where rank ``rank`` runs ({"ip", "pid", "node_id"}; ip "unknown" if it never answered)."""
        try:
            return self.ledger.get(self._node_refs[rank], timeout=5)
        except Exception:
            return {"ip": "unknown"}

    def _wait_one(self, rank: int, ref) -> Any:
        value = self._fetch(rank, ref)
        self.ledger.record_get([ref], [value])
        return value

    def _fetch(self, rank: int, ref) -> Any:
        """``ray.get(ref)`` of rank ``rank``'s call; a dead actor or a user error is named (not counted)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(ref)
        except RayActorError as e:
            node = self.node(rank)
            where = f"node {node['ip']}" + (f", pid {node['pid']}" if "pid" in node else "")
            raise ActorDied(f"{self.role} rank {rank} ({where}) died: {_short(e)}") from e
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, UserError):  # the user's input is wrong: say so, with the rank
                raise type(cause)(f"{self.role} rank {rank}: {cause}") from e
            raise

    # -- teardown ---------------------------------------------------------------
    def kill(self) -> None:
        """Kill every rank and free the group's own placement group (shared ones are the caller's)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already dead
                pass
        if self._own_pg is not None:
            remove_placement_group(self._own_pg)
            self._own_pg = None


def wait_placement(pg, what: str, timeout_s: float) -> None:
    """Wait for a placement group, or explain which resources the cluster lacks."""
    import ray

    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise UserError(
            f"placement group for {what} not ready after {timeout_s:.0f} s: the cluster has "
            f"{ray.cluster_resources()} in all, {ray.available_resources()} free; lower num_cpus/num_gpus "
            f"or ranks, or add nodes") from None
