"""Starting or attaching to Ray the same way everywhere (CLI, tests, benchmarks).

Without an address an embedded local Ray starts on 127.0.0.1. On some hosts Ray
picks a non-loopback interface and then cannot reach itself; setting
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray starts keeps a local cluster on
loopback, so it is set here for local starts (an explicit user value wins).
"""
from __future__ import annotations

import os
import socket

LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def local_env() -> None:
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)


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
    return ray


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (a torch.distributed rendezvous, a test server)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
