"""``RankerModel``: the model in a Serve deployment of its own, fed whole batches.

With ``ServeConfig.separate_model`` the HTTP deployment (``Ranker``, :mod:`rlhf_ray.serve.app`)
parses requests, forms batches and answers; it sends each batch to a ``RankerModel``
replica in one call (``rank_batch``). The model then runs in a process whose interpreter
does nothing else: in the HTTP replica it shares one interpreter lock with the event loop
that parses and answers requests, and ``bench/gil_contention.py`` measured what a busy
thread of the same process costs the model (x1.28 per batch) against a busy process beside
it (x1.01). The price is one Ray call per batch (the ``handoff`` latency stage).

The checkpoint travels in this deployment's ``user_config`` (``{"checkpoint": DIR}``): a
config update that changes only it swaps the checkpoint in place, as
:meth:`RankerModel.reconfigure` (see :class:`~rlhf_ray.serve.host.ModelHost`).
"""
from __future__ import annotations

import asyncio
from typing import Sequence

from ray import serve

from rlhf_ray.config import ConfigError, ServeConfig
from rlhf_ray.serve.host import ModelHost
from rlhf_ray.serve.ranker import Page, RankRequest, RequestError, UserHistories

MODEL_DEPLOYMENT = "RankerModel"
MODEL_USER_CONFIG_KEYS = ("checkpoint",)


def replica_id() -> str:
    """This Serve replica's id ("local" outside a replica)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001  outside a replica (never in production)
        return "local"


def model_host(settings: dict) -> tuple[ServeConfig, ModelHost]:
    """The replica's settings and an empty :class:`ModelHost` (torch threads set, user data loaded)."""
    import torch

    cfg: ServeConfig = ServeConfig.from_dict(settings)  # type: ignore[assignment]
    torch.set_num_threads(cfg.torch_threads)
    users = UserHistories.load(cfg.data) if cfg.data else None
    return cfg, ModelHost(users, cfg.ranker_options(), replica=replica_id())


def unknown_keys(user_config: dict | None, allowed: Sequence[str], deployment: str) -> None:
    """Raise ``ConfigError`` naming the keys of ``user_config`` that ``deployment`` does not take."""
    unknown = sorted(set(user_config or {}) - set(allowed))
    if unknown:
        raise ConfigError(f"user_config of {deployment}: unknown key(s) {unknown}; valid keys: {list(allowed)}")


@serve.deployment(name=MODEL_DEPLOYMENT, max_constructor_retry_count=3)
class RankerModel:
    """One model replica: ranks the batches the HTTP replicas send."""

    def __init__(self, settings: dict):
        self.cfg, self.host = model_host(settings)
        # The checkpoint arrives with the user_config: Serve calls reconfigure() next.

    async def reconfigure(self, user_config: dict) -> None:
        """Apply ``{"checkpoint": DIR}``; a failed load keeps the current checkpoint (reported by describe)."""
        unknown_keys(user_config, MODEL_USER_CONFIG_KEYS, MODEL_DEPLOYMENT)
        await self.host.load((user_config or {}).get("checkpoint"))

    async def rank_batch(self, requests: list[RankRequest]) -> tuple[list[Page | RequestError], float]:
        """One batch in a worker thread (this replica's event loop stays free): results, model seconds."""
        return await asyncio.to_thread(self.host.rank, requests)

    def check_health(self) -> None:
        self.host.check()

    def health(self) -> dict:
        return self.host.health()

    def describe(self) -> dict:
        return self.host.describe()
