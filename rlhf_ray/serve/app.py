"""The Ray Serve application: the ``Ranker`` deployment, a FastAPI ingress with dynamic
batching (:class:`~rlhf_ray.serve.batcher.Batcher`: a batch is formed when the model is
free, so batches grow with the load) and per-stage latency metrics
(:mod:`rlhf_ray.serve.latency`). The model runs in the ``Ranker`` replica itself, or with
``separate_model`` in a ``RankerModel`` deployment of its own that ``Ranker`` feeds one whole
batch per call (:mod:`rlhf_ray.serve.model_replica` says when that pays).

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

(with ``separate_model: true`` in ``args``: ``Ranker``'s user_config holds the batch settings
and a second deployment ``RankerModel`` has ``user_config: {checkpoint: /models/sft}``).

Switching checkpoints without a restart: change only the ``checkpoint`` of the user_config
that holds it in that config (``serve deploy``, RayService ``serveConfigV2``, or
:func:`deploy` with ``user_config_override={"checkpoint": ...}``). Serve then calls
``reconfigure`` on the running replicas: the new checkpoint is loaded (hashes verified)
beside the old one and swapped in between batches. If it cannot be loaded the replica keeps
serving the old one and ``GET /v1/model`` reports the error in ``reconfigure_error``.
(``serve.run`` from Python always replaces replicas; only a config update with unchanged
``args`` reconfigures in place.)
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ray import serve

from rlhf_ray.config import ConfigError, ServeConfig
from rlhf_ray.serve.api import build_api
from rlhf_ray.serve.batcher import Batcher
from rlhf_ray.serve.host import ModelHost
from rlhf_ray.serve.latency import LatencyMetrics
from rlhf_ray.serve.model_replica import (MODEL_DEPLOYMENT, MODEL_USER_CONFIG_KEYS, RankerModel, model_host,
                                          replica_id, unknown_keys)
from rlhf_ray.serve.ranker import Page, RankRequest, RequestError

DEPLOYMENT = "Ranker"
IMPORT_PATH = "rlhf_ray.serve.app:build_app"
# ServeConfig fields that travel in a user_config (reconfigurable in place), by deployment: all
# in Ranker's, or with separate_model the checkpoint in RankerModel's; the rest are init args.
USER_CONFIG_KEYS = ("checkpoint", "max_batch_size", "batch_wait_ms")
BATCH_KEYS = ("max_batch_size", "batch_wait_ms")
# Fields that only the driver uses (where to deploy), never a replica.
DRIVER_KEYS = ("host", "port", "address", "num_cpus", "ingress", "worker_niceness", "blocking", "app_name",
               "route_prefix")
MODEL_MAX_ONGOING = 8  # batches a RankerModel replica accepts at once (each HTTP replica sends one at a time)
WORKER_NICENESS_ENV = "RAY_worker_niceness"  # the raylet's worker_niceness (default 15), read when Ray starts
# Ray's own switches for each ``ServeConfig.ingress``; every Serve process reads them when it
# starts, so they must be in the environment before Ray starts (a cluster's nodes set them itself).
INGRESS_ENV = {
    "proxy": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}

class LocalModel:
    """The model in the HTTP replica itself: batches run in a worker thread of this process."""

    def __init__(self, host: ModelHost):
        self.host = host

    async def rank_batch(self, requests: list[RankRequest]) -> tuple[list[Page | RequestError], float]:
        return await asyncio.to_thread(self.host.rank, requests)

    async def health(self) -> dict:
        return self.host.health()

    async def describe(self) -> dict:
        return self.host.describe()


class RemoteModel:
    """The model in ``RankerModel`` replicas (:mod:`rlhf_ray.serve.model_replica`): one Ray call per batch."""

    def __init__(self, handle):
        self.handle = handle

    async def rank_batch(self, requests: list[RankRequest]) -> tuple[list[Page | RequestError], float]:
        return await self.handle.rank_batch.remote(requests)

    async def health(self) -> dict:
        return await self.handle.health.remote()

    async def describe(self) -> dict:
        return await self.handle.describe.remote()


@serve.deployment(name=DEPLOYMENT, max_constructor_retry_count=3)
@serve.ingress()
class RankerDeployment:
    """One HTTP replica: the API, a batch queue, counters of the batches served and latency metrics.
    The model is in this replica, or (given ``model``, a handle to ``RankerModel``) in its own."""

    def __init__(self, settings: dict, model=None):
        self.host: ModelHost | None = None  # the checkpoint, when this replica loads it itself
        if model is None:
            self.cfg, self.host = model_host(settings)
            self.model: LocalModel | RemoteModel = LocalModel(self.host)
        else:  # no torch threads to set, no user data to load: the model replicas do that
            self.cfg = ServeConfig.from_dict(settings)  # type: ignore[assignment]
            self.model = RemoteModel(model)
        self.latency = LatencyMetrics()
        self.batcher = Batcher(self.model.rank_batch, self.cfg.max_batch_size, self.cfg.batch_wait_ms / 1000.0,
                               on_batch=self.latency.observe_batch)
        self.replica = replica_id()
        # The checkpoint (or, with a model deployment, the batch settings) arrive with the
        # user_config: Serve calls reconfigure() next.

    def __serve_build_asgi_app__(self):
        return build_api(self)

    # ------------------------------------------------------------------ reconfigure

    async def reconfigure(self, user_config: dict) -> None:
        """Apply ``{"checkpoint": DIR, "max_batch_size": N, "batch_wait_ms": X}`` (any subset;
        ``checkpoint`` only when this replica holds the model).

        Called by Serve at start and whenever only the user_config changes. A checkpoint
        that fails to load keeps the current one when there is one (the error is
        reported by ``/v1/model``); at start-up it fails the replica.
        """
        keys = USER_CONFIG_KEYS if self.host is not None else BATCH_KEYS
        try:
            unknown_keys(user_config, keys, DEPLOYMENT)
        except ConfigError as e:
            if self.host is None and "checkpoint" in (user_config or {}):
                raise ConfigError(f"{e} (with separate_model the checkpoint goes in {MODEL_DEPLOYMENT}'s "
                                  "user_config)") from None
            raise
        new = self.cfg.replace(**{k: v for k, v in (user_config or {}).items() if v is not None})
        self.batcher.configure(new.max_batch_size, new.batch_wait_ms / 1000.0)  # type: ignore[attr-defined]
        if self.host is not None:
            await self.host.load(new.checkpoint)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ serving

    async def rank(self, req: RankRequest) -> tuple[Page, dict[str, float]]:
        out, timing = await self.batcher.submit(req)
        if isinstance(out, RequestError):
            raise out
        return out, timing.stages_ms()

    def observe(self, stages_ms: dict[str, float]) -> None:
        self.latency.observe(stages_ms)

    def check_health(self) -> None:
        """Serve's health probe: a replica that holds the model must have a checkpoint
        (a ``RankerModel`` replica answers its own probe)."""
        if self.host is not None:
            self.host.check()

    async def health(self) -> dict:
        return await self.model.health()

    def stats(self) -> dict:
        hist = self.batcher.histogram
        return {
            "replica": self.replica, "requests": sum(s * n for s, n in hist.items()), "batches": sum(hist.values()),
            "batch_size_histogram": {str(k): v for k, v in sorted(hist.items())},
            "max_batch_size": self.batcher.max_batch_size, "batch_wait_timeout_s": self.batcher.wait_s,
            "niceness": os.nice(0), **self.latency.snapshot(),
        }

    async def model_info(self) -> dict:
        stats = self.stats()
        return {**await self.model.describe(), "batch_size_histogram": stats["batch_size_histogram"],
                "stats": stats}


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


def user_configs(cfg: ServeConfig) -> dict[str, dict[str, Any]]:
    """Each deployment's user_config: all of USER_CONFIG_KEYS in Ranker's, or with
    ``separate_model`` the batch settings in Ranker's and the checkpoint in RankerModel's."""
    if not cfg.separate_model:
        return {DEPLOYMENT: {k: getattr(cfg, k) for k in USER_CONFIG_KEYS}}
    return {DEPLOYMENT: {k: getattr(cfg, k) for k in BATCH_KEYS},
            MODEL_DEPLOYMENT: {k: getattr(cfg, k) for k in MODEL_USER_CONFIG_KEYS}}


def _replicas(cfg: ServeConfig, target_ongoing: float) -> dict[str, Any]:
    if cfg.autoscaling:
        return {"autoscaling_config": {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                       "target_ongoing_requests": target_ongoing}}
    return {"num_replicas": cfg.replicas}


def deployment_options(cfg: ServeConfig) -> dict[str, dict[str, Any]]:
    """Each deployment's replica count or autoscaling, resources and concurrency. With
    ``separate_model`` the HTTP replicas reserve ``ingress_cpus`` and the model replicas
    ``cpus_per_replica``; a model replica scales on batches in flight (one per busy HTTP replica)."""
    opts = {DEPLOYMENT: {
        "ray_actor_options": {"num_cpus": cfg.ingress_cpus if cfg.separate_model else cfg.cpus_per_replica},
        "max_ongoing_requests": max(cfg.max_ongoing_requests, cfg.max_batch_size),
        **_replicas(cfg, cfg.target_ongoing_requests),
    }}
    if cfg.separate_model:
        opts[MODEL_DEPLOYMENT] = {"ray_actor_options": {"num_cpus": cfg.cpus_per_replica},
                                  "max_ongoing_requests": MODEL_MAX_ONGOING, **_replicas(cfg, 1.0)}
    return opts


def build_app(args: dict[str, Any]):
    """Serve application builder: ``args`` are :class:`ServeConfig` fields (``checkpoint`` required)."""
    cfg: ServeConfig = ServeConfig.from_dict(dict(args or {}))  # type: ignore[assignment]
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: required (the checkpoint directory to serve)")
    conf, opts = user_configs(cfg), deployment_options(cfg)
    http = RankerDeployment.options(user_config=conf[DEPLOYMENT], **opts[DEPLOYMENT])
    if not cfg.separate_model:
        return http.bind(init_settings(cfg))
    model = RankerModel.options(user_config=conf[MODEL_DEPLOYMENT], **opts[MODEL_DEPLOYMENT])
    return http.bind(init_settings(cfg), model.bind(init_settings(cfg)))


def serve_config(cfg: ServeConfig) -> dict[str, Any]:
    """The declarative Serve config (``serve deploy`` / RayService ``serveConfigV2``) for ``cfg``."""
    defaults = ServeConfig().to_dict()
    args = {k: v for k, v in init_settings(cfg).items() if v != defaults[k]}
    args = {"checkpoint": cfg.checkpoint, **args}
    conf, opts = user_configs(cfg), deployment_options(cfg)
    deployments = [{"name": name, "user_config": conf[name], **opts[name]} for name in conf]
    return {
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [{
            "name": cfg.app_name, "route_prefix": cfg.route_prefix, "import_path": IMPORT_PATH,
            "args": args, "deployments": deployments,
        }],
    }


def deploy(cfg: ServeConfig, *, user_config_override: dict | None = None, timeout_s: float = 180.0) -> None:
    """Deploy (or update) the application from its declarative config on the connected Ray
    cluster and wait until it runs. An update that changes only user_configs reconfigures the
    running replicas in place; each key of ``user_config_override`` goes to the deployment
    whose user_config holds it (:func:`user_configs`). Raises ``RuntimeError`` with Serve's
    message when the deployment fails."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    conf = serve_config(cfg)
    deployments = {d["name"]: d for d in conf["applications"][0]["deployments"]}
    for key, value in (user_config_override or {}).items():
        owner = [d for d in deployments.values() if key in d["user_config"]]
        if not owner:
            raise ConfigError(f"user_config_override: unknown key {key!r}; valid keys: {list(USER_CONFIG_KEYS)}")
        owner[0]["user_config"][key] = value
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
