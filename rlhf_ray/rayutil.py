"""Starting or attaching to Ray the same way everywhere (CLI, tests, benchmarks).

Without an address an embedded local Ray starts on 127.0.0.1. On some hosts Ray
picks a non-loopback interface and then cannot reach itself; setting
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray starts keeps a local cluster on
loopback, so it is set here for local starts (an explicit user value wins).
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager

LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def local_env() -> None:
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where the program is, so it unwinds as Ctrl-C does."""


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


_unwinding = False  # sigterm_unwinds() is in force: init_ray puts the handler back after ray.init


def sigterm_unwinds():
    """Make SIGTERM (Kubernetes, systemd, ``kill``) take the Ctrl-C path in this process: ``finally``
    blocks run (actors killed, Serve shut down) and then Ray's shutdown at exit, which stops the
    Ray processes a local ``ray.init`` started. (``ray.init`` installs its own handler, which
    exits at once from wherever the program is; :func:`init_ray` puts this one back.)
    Main thread only; returns the handler it replaced, for :func:`sigterm_restore` (None: not installed)."""
    import signal
    import threading

    global _unwinding
    if threading.current_thread() is not threading.main_thread():
        return None
    _unwinding = True
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    return previous if previous is not None else signal.SIG_DFL


def sigterm_restore(previous) -> None:
    import signal

    global _unwinding
    if previous is not None:
        _unwinding = False
        signal.signal(signal.SIGTERM, previous)


def init_ray(address: str | None = None, num_cpus: int | None = None, **kw):
    """``ray.init`` for an existing cluster (``address``: auto or ray://...) or a local one."""
    import ray

    if ray.is_initialized():
        return ray
    if address:
        ray.init(address=address, log_to_driver=kw.pop("log_to_driver", True), **kw)
    else:
        local_env()
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=kw.pop("log_to_driver", True), **kw)
    if _unwinding:
        sigterm_unwinds()
    return ray


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (a torch.distributed rendezvous, a test server)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def simulated_cluster(nodes: list[dict], system_config: dict | None = None):
    """A Ray cluster of ``len(nodes)`` nodes on this machine (``ray.cluster_utils.Cluster``: one
    raylet per node on 127.0.0.1), connected; yields ``(cluster, node handles)``, node 0 the head.

    Each entry of ``nodes`` is what the node offers: ``{"num_cpus": 1, "resources": {"n1": 1}}``.
    ``system_config``: Ray system settings of the head (e.g. faster node-death detection). The
    cluster's temp dir (sessions, and the address file ``ray.init()`` would otherwise pick up)
    is private, so other Ray users on this machine never attach to it; all of it goes at exit.
    A driver connection this process already holds (e.g. the embedded Ray an earlier
    ``launch()`` left up) is closed first: the driver can be connected to one cluster only.
    """
    import shutil
    import tempfile

    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    local_env()
    tmp = tempfile.mkdtemp(prefix="rsim-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    cluster = None
    try:
        head = dict(nodes[0])
        if system_config:
            head["_system_config"] = system_config
        cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **head})
        handles = [cluster.head_node] + [cluster.add_node(**n) for n in nodes[1:]]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, handles
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


def node_of(resource: str) -> str:
    """The id of the (alive) node that offers custom resource ``resource``."""
    import ray

    ids = [n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"]]
    if len(ids) != 1:
        raise ValueError(f"{len(ids)} alive nodes offer {resource!r}")
    return ids[0]
