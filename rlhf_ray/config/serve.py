"""``rlhf-ray serve``: the Ray Serve ranker."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

from rlhf_ray.config.base import Config, doc, require


@dataclass
class ServeConfig(Config):
    """``rlhf-ray serve``: the Ray Serve ranker (HTTP address, replicas, batching, request limits).

    ``checkpoint``, ``max_batch_size`` and ``batch_wait_ms`` travel in the deployment's
    ``user_config``: changing only them reconfigures running replicas in place. Prompts are
    built with the checkpoint's own prompt config (``manifest["prompt"]``) unless
    ``max_history`` overrides its history length.
    """

    checkpoint: str | None = field(default=None, metadata=doc(
        "checkpoint directory to serve (any stage); switch later with a user_config update"))
    data: str | None = field(default=None, metadata=doc(
        "prepared data directory: known users' histories come from its sequences.parquet"))
    host: str = field(default="127.0.0.1", metadata=doc("HTTP bind address (0.0.0.0 exposes it to the network)"))
    port: int = field(default=8000, metadata=doc("HTTP port", ge=1, le=65535))
    route_prefix: str = field(default="/", metadata=doc("URL prefix of the application"))
    app_name: str = field(default="ranker", metadata=doc("Serve application name"))
    address: str | None = field(default=None, metadata=doc(
        "attach to a Ray cluster (auto | ray://host:10001); default: embedded local Ray"))
    num_cpus: int = field(default=0, metadata=doc("CPUs of an embedded local Ray (0 = all)", ge=0))
    ingress: typing.Literal["proxy", "haproxy"] = field(default="proxy", metadata=doc(
        "HTTP path of an embedded local Ray: proxy = Serve's Python proxy actor relays each request to a "
        "replica (every listener on `host`); haproxy = Ray's high-throughput mode (HAProxy in front, each "
        "replica answers HTTP itself: about 1 ms instead of 11-17 ms per request here), whose stats (8404) "
        "and Prometheus (9101) listeners Ray binds on all interfaces. A cluster given by --address uses "
        "its own nodes' setting (cluster/ray-service.ranker.yaml sets haproxy)", legacy="proxy"))
    worker_niceness: int = field(default=0, metadata=doc(
        "CPU niceness of the replicas of an embedded local Ray (RAY_worker_niceness). Ray's default, 15, "
        "suits batch work; a replica at 15 yields the CPU to every process at 0 on its node (Ray's own, "
        "HAProxy's, a client's), so the ranker serves at 0 unless told otherwise. A cluster given by "
        "--address uses its nodes' setting (RAY_worker_niceness in their environment; the cluster/ manifests "
        "keep Ray's 15)", ge=0, le=19, legacy=15))
    replicas: int = field(default=1, metadata=doc("replicas of the ranker (ignored with --autoscaling)", ge=1))
    autoscaling: bool = field(default=False, metadata=doc("let Serve scale replicas between min and max"))
    min_replicas: int = field(default=1, metadata=doc("autoscaling: fewest replicas", ge=1))
    max_replicas: int = field(default=2, metadata=doc("autoscaling: most replicas", ge=1))
    target_ongoing_requests: float = field(default=16.0, metadata=doc(
        "autoscaling: requests in flight per replica to aim for", gt=0))
    cpus_per_replica: float = field(default=1.0, metadata=doc(
        "CPUs Ray reserves for each replica that runs the model", ge=0))
    separate_model: bool = field(default=False, metadata=doc(
        "run the model in a deployment of its own (RankerModel), fed whole batches by the HTTP deployment "
        "(Ranker) in one Ray call each: parsing and answering HTTP no longer share one interpreter lock "
        "with the model, at the price of that call; the checkpoint then goes in RankerModel's user_config. "
        "Both deployments take the replica settings (a model replica autoscales on batches in flight, "
        "target 1). On one 2-core node it served fewer pages/s at every load (README, Serving under load); "
        "it is for clusters where HTTP and model replicas sit on different nodes", legacy=False))
    ingress_cpus: float = field(default=0.5, metadata=doc(
        "with separate_model: CPUs Ray reserves for each HTTP replica", ge=0))
    torch_threads: int = field(default=1, metadata=doc("torch intra-op threads in each replica", ge=1))
    max_batch_size: int = field(default=16, metadata=doc("most requests decoded together in one batch", ge=1))
    batch_wait_ms: float = field(default=10.0, metadata=doc(
        "how long a batch may wait for company once the model is free; it waits only while it holds fewer "
        "requests than were in flight during the previous batch (a lone client never waits), and what "
        "queued while the model ran joins without waiting", ge=0))
    max_ongoing_requests: int = field(default=64, metadata=doc(
        "requests a replica accepts at once (keep >= max_batch_size)", ge=1))
    max_k: int = field(default=50, metadata=doc("largest page a request may ask for", ge=1, le=100))
    default_k: int = field(default=10, metadata=doc("page size when a request gives no k", ge=1))
    max_history: int = field(default=0, metadata=doc(
        "most recent history items in a prompt (0 = the checkpoint's prompt)", ge=0))
    shortlist: int = field(default=0, metadata=doc(
        "decode each page among the M items its first slot scores highest (0 = the whole catalogue; "
        "raised to the request's k when smaller): for large catalogues, where scoring every item at "
        "every slot dominates (README, 'Cost as the catalogue grows')", ge=0))
    max_body_bytes: int = field(default=65536, metadata=doc("larger request bodies get 413", ge=1024))
    blocking: bool = field(default=True, metadata=doc(
        "keep running until Ctrl-C; --no-blocking deploys and returns (with --address it stays up)"))

    def ranker_options(self) -> dict:
        """The keyword arguments every :class:`rlhf_ray.serve.ranker.Ranker` of this server is built with."""
        return {"max_k": self.max_k, "max_history": self.max_history, "shortlist": self.shortlist}

    def validate(self) -> None:
        require(self.route_prefix.startswith("/"), "route_prefix", f"must start with '/', got {self.route_prefix!r}")
        require(self.min_replicas <= self.max_replicas, "min_replicas",
                f"{self.min_replicas} exceeds max_replicas={self.max_replicas}")
        require(self.default_k <= self.max_k, "default_k",
                f"must be in [1, max_k={self.max_k}], got {self.default_k}")
