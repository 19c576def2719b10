"""HTTP request and response bodies (pydantic): what FastAPI validates and documents.

Item ids are the catalogue's original ids (the ``item`` column), sent as strings or
integers; ``7`` and ``"7"`` name the same item. Types are strict (no floats or
booleans for ids and counts, no strings or booleans for numbers) so a client bug fails
with a 422 naming the field. Bodies are read by :mod:`rlhf_ray.serve.body`.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, model_validator

from rlhf_ray.serve.ranker import MAX_TEMPERATURE, MIN_TEMPERATURE, RankRequest

ItemId = Union[StrictStr, StrictInt]


class RankBody(BaseModel):
    """``POST /v1/rank``: exactly one of ``user_id`` and ``history``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"user_id": "196", "k": 10},
        {"history": ["50", "181", "100"], "k": 5, "exclude": ["258"]},
        {"history": [], "k": 3, "candidates": ["1", "2", "3", "4"], "strategy": "sample", "seed": 7},
    ]})

    user_id: Optional[ItemId] = Field(None, description="a user of the data given at start (else: popularity page)")
    history: Optional[list[ItemId]] = Field(None, description="item ids, oldest first ([] = popularity page)")
    k: Optional[StrictInt] = Field(None, ge=1, description="items on the page (default and upper bound: server config)")
    exclude: list[ItemId] = Field(default_factory=list, description="items never to put on the page")
    candidates: Optional[list[ItemId]] = Field(None, min_length=1, description="re-rank only these items")
    strategy: Literal["greedy", "sample"] = Field("greedy", description="greedy: most likely item per slot")
    temperature: StrictFloat = Field(1.0, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE, allow_inf_nan=False,
                                     description="sampling temperature")
    top_k: StrictInt = Field(0, ge=0, description="sample among the top_k allowed items (0 = all)")
    seed: Optional[StrictInt] = Field(None, ge=0, lt=2**63, description="sampling: same seed, same page")

    @model_validator(mode="after")
    def _one_source(self) -> "RankBody":
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id and history")
        return self

    def to_request(self, default_k: int) -> RankRequest:
        return RankRequest(
            user_id=None if self.user_id is None else str(self.user_id),
            history=None if self.history is None else [str(i) for i in self.history],
            k=default_k if self.k is None else self.k,
            exclude=[str(i) for i in self.exclude],
            candidates=None if self.candidates is None else [str(i) for i in self.candidates],
            strategy=self.strategy, temperature=self.temperature, top_k=self.top_k, seed=self.seed,
        )


class RankResponse(BaseModel):
    """One page; ``scores[j]`` is log p(items[j] | history, items[:j]) under the restricted distribution."""

    items: list[str]
    titles: list[str]
    scores: list[float]
    k: int = Field(description="items asked for (items may hold fewer when fewer are allowed)")
    source: Literal["user_history", "request_history", "popularity"]
    checkpoint_id: str
    stage: str
    strategy: str
    notes: list[str] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """A 4xx answer of this service."""

    detail: str = Field(description="what is wrong, naming every field at fault")
    field: str = Field("", description="the (first) field at fault: a body path such as history[2], or body")
    unknown_items: list[str] = Field(default_factory=list)


class Health(BaseModel):
    status: Literal["ok"]
    checkpoint_id: str
    stage: str


class Stats(BaseModel):
    """Counters of this replica since it started."""

    replica: str
    requests: int
    batches: int
    batch_size_histogram: dict[str, int] = Field(description="batch size -> batches of that size")
    max_batch_size: int
    batch_wait_timeout_s: float
    niceness: int = Field(description="the replica process's CPU niceness (ServeConfig.worker_niceness)")
    timed_requests: int = Field(description="pages served and timed (the count behind stage_ms_sum)")
    stage_ms_sum: dict[str, float] = Field(description="stage -> milliseconds summed over timed requests: parse, "
                                           "queue, batch_wait, model, handoff, serialise, total (rlhf_ray.serve.latency)")


class ModelInfo(BaseModel):
    """The served checkpoint's manifest summary, the serving settings and this replica's stats."""

    id: str
    stage: str
    created: Optional[str] = None
    path: str
    metrics: dict
    parent: Optional[dict] = None
    data_fingerprint: Optional[str] = None
    n_items: int
    max_k: int
    max_history: int
    shortlist: int = Field(0, description="pages decoded among the first slot's best M items (0 = whole catalogue)")
    known_users: int
    requested_checkpoint: str = Field(description="the checkpoint the latest reconfigure asked for")
    reconfigure_error: Optional[str] = Field(None, description="why the latest reconfigure kept the old checkpoint")
    model_replica: str = Field(description="the replica holding the model: this HTTP replica, or with "
                               "separate_model the RankerModel replica that answered")
    batch_size_histogram: dict[str, int]
    stats: Stats
