"""A checkpoint held for serving and swapped in place: loading, the "same checkpoint?" test,
the error of a reload that failed, and one batch at a time through :class:`Ranker`.

Pure torch and asyncio, no Ray: whichever Serve deployment runs the model owns one
(:mod:`rlhf_ray.serve.app` in the HTTP replica, :mod:`rlhf_ray.serve.model` in a model
replica of its own).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Sequence

from rlhf_ray.config import ConfigError
from rlhf_ray.serve.ranker import Page, Ranker, RankRequest, RequestError, UserHistories

logger = logging.getLogger("ray.serve")


class ModelHost:
    """One :class:`Ranker` at a time, loaded with the server's ``max_k``/``max_history``/``shortlist``
    (``options``: :meth:`rlhf_ray.config.ServeConfig.ranker_options`).

    ``await load(path)`` swaps the checkpoint (loaded in a worker thread, beside the old
    one); a path that fails to load keeps the current model and records the error in
    ``reconfigure_error`` (with no model yet it raises: a replica must not start empty).
    """

    def __init__(self, users: UserHistories | None, options: dict, replica: str = "local"):
        self.users, self.options, self.replica = users, dict(options), replica
        self.ranker: Ranker | None = None
        self.requested = ""
        self.reconfigure_error: str | None = None
        self._loading = asyncio.Lock()

    async def load(self, path: str | None) -> None:
        async with self._loading:
            try:
                self.requested = path or self.requested
                if path and not (self.ranker is not None and self._same_checkpoint(path)):
                    self.ranker = await asyncio.to_thread(
                        Ranker.load, path, self.users, **self.options)
                self.reconfigure_error = None
            except Exception as e:  # noqa: BLE001  report anything, keep serving the old model
                if self.ranker is None:
                    raise
                self.reconfigure_error = f"{type(e).__name__}: {e}"
                logger.error("reconfigure failed, still serving %s: %s", self.ranker.id, self.reconfigure_error)
            self.check()

    def _same_checkpoint(self, path: str) -> bool:
        """Same directory and same manifest id (a directory re-exported in place is reloaded)."""
        assert self.ranker is not None
        try:
            manifest = json.loads((Path(path) / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return Path(path).resolve() == self.ranker.ckpt.path.resolve() and manifest.get("id") == self.ranker.id

    def check(self) -> None:
        """Raise unless a checkpoint is loaded (Serve's health probe of the replica holding it)."""
        if self.ranker is None:
            raise ConfigError("no checkpoint loaded: deploy with a user_config holding `checkpoint`")

    def rank(self, requests: Sequence[RankRequest]) -> tuple[list[Page | RequestError], float]:
        """One batch (call it from a worker thread): its results and the seconds the model took."""
        ranker = self.ranker  # one checkpoint per batch, even if a reconfigure swaps it meanwhile
        assert ranker is not None
        t0 = time.perf_counter()
        out = ranker.rank(requests)
        return out, time.perf_counter() - t0

    def health(self) -> dict:
        self.check()
        assert self.ranker is not None
        return {"status": "ok", "checkpoint_id": self.ranker.id, "stage": self.ranker.stage}

    def describe(self) -> dict:
        """The checkpoint's summary plus what the latest reconfigure asked for and how it went."""
        self.check()
        assert self.ranker is not None
        return {**self.ranker.describe(), "requested_checkpoint": self.requested,
                "reconfigure_error": self.reconfigure_error, "model_replica": self.replica}
