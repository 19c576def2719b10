"""The Ray Serve application: one ``Ranker`` deployment with a FastAPI ingress and
dynamic batching (:class:`~rlhf_ray.serve.batcher.Batcher`: a batch is formed when the
model is free, so batches grow with the load) and per-stage latency metrics
(:mod:`rlhf_ray.serve.latency`).

Import path (``serve run``, ``serve deploy`` configs, a KubeRay RayService)::

    rlhf_ray.serve.app:build_app

    serve run rlhf_ray.serve.app:build_app checkpoint=runs/sft data=data/ml-100k max_k=50

``build_app(args)`` reads ``args`` as :class:`~rlhf_ray.config.ServeConfig` fields
(strings are converted). The equivalent declarative config, which is what
``rlhf-ray serve`` deploys and ``rlhf-ray serve --print-config`` prints::

    http_options: {host: 127.0.0.1, port: 8000}
    applications:
      - name: ranker
        route_prefix: /
        import_path: rlhf_ray.serve.app:build_app
        args: {checkpoint: /models/sft, data: /data/ml-100k, max_k: 50}
        deployments:
          - name: Ranker
            num_replicas: 1
            user_config: {checkpoint: /models/sft, max_batch_size: 16, batch_wait_ms: 10.0}

Switching checkpoints without a restart: change only ``user_config`` of the
``Ranker`` deployment in that config (``serve deploy``, RayService ``serveConfigV2``,
or :func:`deploy` with ``user_config={"checkpoint": ...}``). Serve then calls
:meth:`RankerDeployment.reconfigure` on the running replicas: the new checkpoint is
loaded (hashes verified) beside the old one and swapped in between batches. If it
cannot be loaded the replica keeps serving the old one and ``GET /v1/model`` reports
the error in ``reconfigure_error``. (``serve.run`` from Python always replaces
replicas; only a config update with unchanged ``args`` reconfigures in place.)
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ray import serve

from rlhf_ray.config import ConfigError, ServeConfig
from rlhf_ray.serve.api import build_api
from rlhf_ray.serve.batcher import Batcher
from rlhf_ray.serve.latency import LatencyMetrics
from rlhf_ray.serve.ranker import Page, Ranker, RankRequest, RequestError, UserHistories

DEPLOYMENT = "Ranker"
IMPORT_PATH = "rlhf_ray.serve.app:build_app"
# ServeConfig fields that travel in user_config (reconfigurable in place); the rest are init args.
USER_CONFIG_KEYS = ("checkpoint", "max_batch_size", "batch_wait_ms")
# Fields that only the driver uses (where to deploy), never a replica.
DRIVER_KEYS = ("host", "port", "address", "num_cpus", "ingress", "worker_niceness", "blocking", "app_name",
               "route_prefix")
WORKER_NICENESS_ENV = "RAY_worker_niceness"  # the raylet's worker_niceness (default 15), read when Ray starts
# Ray's own switches for each ``ServeConfig.ingress``; every Serve process reads them when it
# starts, so they must be in the environment before Ray starts (a cluster's nodes set them itself).
INGRESS_ENV = {
    "proxy": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}

logger = logging.getLogger("ray.serve")


@serve.deployment(name=DEPLOYMENT, max_constructor_retry_count=3)
@serve.ingress()
class RankerDeployment:
    """One replica: a :class:`Ranker`, a batch queue, counters of the batches served and latency metrics."""

    def __init__(self, settings: dict):
        import torch

        self.cfg: ServeConfig = ServeConfig.from_dict(settings)  # type: ignore[assignment]
        torch.set_num_threads(self.cfg.torch_threads)
        self.users = UserHistories.load(self.cfg.data) if self.cfg.data else None
        self.ranker: Ranker | None = None
        self.requested = ""
        self.reconfigure_error: str | None = None
        self.latency = LatencyMetrics()
        self.batcher = Batcher(self._rank_batch, self.cfg.max_batch_size, self.cfg.batch_wait_ms / 1000.0,
                               on_batch=self.latency.observe_batch)
        self.replica = _replica_id()
        self._reconfiguring = asyncio.Lock()
        # The checkpoint arrives with the user_config: Serve calls reconfigure() next.

    def __serve_build_asgi_app__(self):
        return build_api(self)

    # ------------------------------------------------------------------ reconfigure

    async def reconfigure(self, user_config: dict) -> None:
        """Apply ``{"checkpoint": DIR, "max_batch_size": N, "batch_wait_ms": X}`` (any subset).

        Called by Serve at start and whenever only the user_config changes. A checkpoint
        that fails to load keeps the current one when there is one (the error is
        reported by ``/v1/model``); at start-up it fails the replica.
        """
        async with self._reconfiguring:
            try:
                new = self._parse_user_config(user_config)
                self.batcher.configure(new.max_batch_size, new.batch_wait_ms / 1000.0)
                path = new.checkpoint
                self.requested = path or self.requested
                if path and not (self.ranker is not None and self._same_checkpoint(path)):
                    self.ranker = await asyncio.to_thread(self._load, path)
                self.reconfigure_error = None
            except Exception as e:  # noqa: BLE001  report anything, keep serving the old model
                if self.ranker is None:
                    raise
                self.reconfigure_error = f"{type(e).__name__}: {e}"
                logger.error("reconfigure failed, still serving %s: %s", self.ranker.id, self.reconfigure_error)
            if self.ranker is None:
                raise ConfigError("no checkpoint to serve: give `checkpoint` in args or user_config")

    def _parse_user_config(self, user_config: dict) -> ServeConfig:
        unknown = sorted(set(user_config or {}) - set(USER_CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"user_config: unknown key(s) {unknown}; valid keys: {list(USER_CONFIG_KEYS)}")
        return self.cfg.replace(**{k: v for k, v in (user_config or {}).items() if v is not None})  # type: ignore

    def _load(self, path: str) -> Ranker:
        return Ranker.load(path, self.users, max_k=self.cfg.max_k, max_history=self.cfg.max_history)

    def _same_checkpoint(self, path: str) -> bool:
        """Same directory and same manifest id (a directory re-exported in place is reloaded)."""
        assert self.ranker is not None
        try:
            manifest = json.loads((Path(path) / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return Path(path).resolve() == self.ranker.ckpt.path.resolve() and manifest.get("id") == self.ranker.id

    # ------------------------------------------------------------------ serving

    def _rank_batch(self, requests: list[RankRequest]) -> list[Page | RequestError]:
        """One batch, in the batcher's worker thread (the event loop keeps accepting requests)."""
        ranker = self.ranker  # one checkpoint per batch, even if a reconfigure swaps it meanwhile
        assert ranker is not None
        return ranker.rank(requests)

    async def rank(self, req: RankRequest) -> tuple[Page, dict[str, float]]:
        out, timing = await self.batcher.submit(req)
        if isinstance(out, RequestError):
            raise out
        return out, timing.stages_ms()

    def observe(self, stages_ms: dict[str, float]) -> None:
        self.latency.observe(stages_ms)

    def check_health(self) -> None:
        """Serve's health probe: a replica without a checkpoint is not healthy."""
        if self.ranker is None:
            raise ConfigError("no checkpoint loaded: deploy with a user_config holding `checkpoint`")

    def health(self) -> dict:
        assert self.ranker is not None
        return {"status": "ok", "checkpoint_id": self.ranker.id, "stage": self.ranker.stage}

    def stats(self) -> dict:
        hist = self.batcher.histogram
        return {
            "replica": self.replica, "requests": sum(s * n for s, n in hist.items()), "batches": sum(hist.values()),
            "batch_size_histogram": {str(k): v for k, v in sorted(hist.items())},
            "max_batch_size": self.batcher.max_batch_size, "batch_wait_timeout_s": self.batcher.wait_s,
            "niceness": os.nice(0), **self.latency.snapshot(),
        }

    def model_info(self) -> dict:
        assert self.ranker is not None
        stats = self.stats()
        return {**self.ranker.describe(), "requested_checkpoint": self.requested,
                "reconfigure_error": self.reconfigure_error,
                "batch_size_histogram": stats["batch_size_histogram"], "stats": stats}


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001  outside a replica (never in production)
        return "local"


# ---------------------------------------------------------------------- building and deploying


def use_ingress(cfg: ServeConfig) -> None:
    """Put ``cfg.ingress``'s Ray switches and ``cfg.worker_niceness`` into this process's
    environment, which the Ray this process starts passes to its Serve processes. Call it before
    ``init_ray``; raises ``ConfigError`` when the ingress can no longer take effect (Ray already
    running here)."""
    if cfg.address:
        return  # the cluster's nodes decide (their environment), not this client
    import os

    import ray

    wanted = INGRESS_ENV[cfg.ingress]
    unset = {k: v for k, v in wanted.items() if os.environ.get(k, "0") != v}  # unset means off
    if unset and ray.is_initialized():
        raise ConfigError(f"ingress: {cfg.ingress!r} needs {sorted(unset)} set before Ray starts, "
                          "and Ray is already running in this process")
    os.environ.update(wanted)
    if not ray.is_initialized():  # with Ray already up here, its workers keep the niceness they have
        os.environ[WORKER_NICENESS_ENV] = str(cfg.worker_niceness)


def init_serve_ray(cfg: ServeConfig, **kw):
    """``init_ray`` for serving ``cfg``: its cluster (``cfg.address``) or an embedded local Ray
    started with ``cfg.ingress``'s switches (:func:`use_ingress`); ``kw`` go to ``init_ray``."""
    from rlhf_ray.rayutil import init_ray

    use_ingress(cfg)
    return init_ray(cfg.address, **kw)


def init_settings(cfg: ServeConfig) -> dict[str, Any]:
    """The replica's constructor argument: all but the driver's settings and the user_config
    fields (so a user_config change never changes the constructor arguments)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in DRIVER_KEYS + USER_CONFIG_KEYS}


def user_config(cfg: ServeConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in USER_CONFIG_KEYS}


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """Replica count or autoscaling, resources and concurrency for ``cfg``."""
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica},
        "max_ongoing_requests": max(cfg.max_ongoing_requests, cfg.max_batch_size),
    }
    if cfg.autoscaling:
        opts["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = cfg.replicas
    return opts


def build_app(args: dict[str, Any]):
    """Serve application builder: ``args`` are :class:`ServeConfig` fields (``checkpoint`` required)."""
    cfg: ServeConfig = ServeConfig.from_dict(dict(args or {}))  # type: ignore[assignment]
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: required (the checkpoint directory to serve)")
    dep = RankerDeployment.options(user_config=user_config(cfg), **deployment_options(cfg))
    return dep.bind(init_settings(cfg))


def serve_config(cfg: ServeConfig) -> dict[str, Any]:
    """The declarative Serve config (``serve deploy`` / RayService ``serveConfigV2``) for ``cfg``."""
    defaults = ServeConfig().to_dict()
    args = {k: v for k, v in init_settings(cfg).items() if v != defaults[k]}
    args = {"checkpoint": cfg.checkpoint, **args}
    deployment = {"name": DEPLOYMENT, "user_config": user_config(cfg), **deployment_options(cfg)}
    return {
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [{
            "name": cfg.app_name, "route_prefix": cfg.route_prefix, "import_path": IMPORT_PATH,
            "args": args, "deployments": [deployment],
        }],
    }


def deploy(cfg: ServeConfig, *, user_config_override: dict | None = None, timeout_s: float = 180.0) -> None:
    """Deploy (or update) the application from its declarative config on the connected Ray
    cluster and wait until it runs. An update that changes only the ``user_config``
    reconfigures the running replicas in place. Raises ``RuntimeError`` with Serve's
    message when the deployment fails."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    conf = serve_config(cfg)
    if user_config_override:
        dep = conf["applications"][0]["deployments"][0]
        dep["user_config"] = {**dep["user_config"], **user_config_override}
    serve.start(http_options=conf["http_options"])
    submitted = time.time()
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(conf))
    wait_running(cfg.app_name, timeout_s, since=submitted)


def wait_running(app_name: str, timeout_s: float, since: float = 0.0) -> None:
    """Poll ``serve.status()`` until ``app_name``, deployed at or after ``since`` (unix time),
    is RUNNING with healthy deployments; raise on failure or timeout."""
    deadline = time.monotonic() + timeout_s
    last = "not deployed yet"
    while time.monotonic() < deadline:
        app = serve.status().applications.get(app_name)
        if app is not None and app.last_deployed_time_s >= since - 1.0:
            status = str(getattr(app.status, "value", app.status))
            if status == "RUNNING" and all(
                    str(getattr(d.status, "value", d.status)) == "HEALTHY" for d in app.deployments.values()):
                return
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                details = "; ".join(f"{n}: {d.message}" for n, d in app.deployments.items() if d.message)
                raise RuntimeError(f"Serve application {app_name!r} {status}: {app.message or details}")
            last = status
        time.sleep(0.5)
    raise RuntimeError(f"Serve application {app_name!r} not running after {timeout_s:.0f} s (last status {last})")
