"""Pages for rank requests from a loaded checkpoint: pure torch, no Ray, no HTTP.

    ranker = Ranker.load("runs/sft", users=UserHistories.load("data/ml-100k"))
    [page] = ranker.rank([RankRequest(user_id="196", k=10)])
    page.items, page.titles, page.scores, page.source

Where the history comes from (``Page.source``):

* ``user_history``: ``user_id`` is a user of the prepared data given at start; the
  history is the user's whole ``sequences.parquet`` row: every item the user rated,
  held-out targets and the ratings after the last positive included, so none of them
  is ever served to that user again.
* ``request_history``: the request's own non-empty ``history``.
* ``popularity``: an empty history or an unknown ``user_id``: the most popular
  allowed items (catalogue ``popularity``), scored as log-probabilities of a
  popularity distribution restricted the same way the model's is.

Requests of one call may differ in k, exclusions, candidates and sampling. They are
decoded in groups that share a decoding setting (all greedy requests together,
padded to the group's largest k and sliced, which is exact because greedy decoding
of slot j depends only on slots < j); a seeded sampling request is decoded on its
own with its own generator so its page does not depend on what it was batched with.
Decoding itself is :func:`rlhf_ray.generation.generate_pages`, the decoder every
stage uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rlhf_ray.checkpoint import Checkpoint, catalog_mismatch, load_checkpoint, prompt_of
from rlhf_ray.config import GenerationConfig
from rlhf_ray.errors import CheckpointError, UserError
from rlhf_ray.generation import build_prompts, generate_pages, prompt_user

SOURCES = ("user_history", "request_history", "popularity")
STRATEGIES = ("greedy", "sample")
DEFAULT_MAX_HISTORY = 50  # when the checkpoint's config records none
SCORE_FLOOR = -1e30  # JSON has no -inf; a log-prob this low means "probability 0"
# Sampling temperatures a request may ask for: below the floor, scores / temperature can
# overflow float32 (and 1e-3 is already greedy for any practical logit gap).
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0


class RequestError(UserError):
    """A rank request the client can fix (unknown items, k out of range, ...)."""

    def __init__(self, message: str, *, field: str = "", items: Sequence[str] = (), status: int = 422):
        super().__init__(message)
        self.field = field
        self.items = list(items)
        self.status = status  # the HTTP status it earns (422, or 415 for a body that is not JSON)


@dataclass
class RankRequest:
    """One request, already type-checked (by the HTTP schema or the caller)."""

    user_id: str | None = None
    history: list[str] | None = None  # original item ids, oldest first
    k: int = 10
    exclude: list[str] = field(default_factory=list)  # never on the page
    candidates: list[str] | None = None  # re-rank only these
    strategy: str = "greedy"  # greedy | sample
    temperature: float = 1.0
    top_k: int = 0  # sample among the top_k allowed items (0 = all)
    seed: int | None = None  # sampling: reproducible page for the same request


@dataclass
class Page:
    """The answer to one request."""

    items: list[str]  # original item ids, slot order; fewer than k when fewer are allowed
    titles: list[str]
    scores: list[float]  # restricted log-prob of each slot given the slots before it
    source: str  # one of SOURCES
    checkpoint_id: str
    stage: str
    notes: list[str] = field(default_factory=list)


@dataclass
class _Job:
    """A request resolved to catalogue indices."""

    index: int  # position in the rank() call
    history: list[int]  # item_idx, oldest first
    user_idx: int | None  # token of a known user (only when the vocabulary has user tokens)
    exclude: list[int]
    candidates: list[int] | None
    k: int
    source: str
    req: RankRequest
    notes: list[str]


class UserHistories:
    """Known users' full histories from a prepared data directory."""

    def __init__(self, item_ids: list[str], by_user: dict[str, tuple[int, np.ndarray]], path: str = ""):
        self.item_ids = item_ids  # the data's catalogue, item_idx order
        self.by_user = by_user  # user id -> (user_idx, item_idx array: every item the user rated)
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> "UserHistories":
        """Read ``users.parquet`` + ``sequences.parquet`` (fingerprint verified): whole rows, not
        only the part before ``end`` (a leave-one-out row goes on after the last positive)."""
        from rlhf_ray.data.prepared import load_prepared

        prepared = load_prepared(path)
        user_of = dict(zip(prepared.users["user_idx"].astype(int), prepared.users["user"].astype(str)))
        by_user = {}
        seq = prepared.sequences
        for u, items in zip(seq["user_idx"], seq["items"]):
            by_user[user_of[int(u)]] = (int(u), np.asarray(items, dtype=np.int64))
        return cls(prepared.items["item"].astype(str).tolist(), by_user, str(path))

    def __len__(self) -> int:
        return len(self.by_user)

    def get(self, user_id: str) -> tuple[int, np.ndarray] | None:
        return self.by_user.get(user_id)


class Ranker:
    """A checkpoint ready to answer :class:`RankRequest` s."""

    def __init__(self, ckpt: Checkpoint, users: UserHistories | None = None, *, max_k: int = 50,
                 max_history: int = 0, shortlist: int = 0):
        self.ckpt = ckpt
        self.model = ckpt.model.eval()
        self.vocab = ckpt.vocab
        self.users = users
        catalog = ckpt.catalog
        for col in ("item", "title"):
            if col not in catalog.columns:
                raise CheckpointError(f"{ckpt.path}: catalog.parquet has no {col!r} column")
        self.item_ids: list[str] = catalog["item"].astype(str).tolist()
        self.titles: list[str] = catalog["title"].fillna("").astype(str).tolist()
        self.index: dict[str, int] = {i: n for n, i in enumerate(self.item_ids)}
        pop = catalog["popularity"].to_numpy(dtype=np.float64) if "popularity" in catalog.columns \
            else np.zeros(len(catalog))
        self.popularity = np.nan_to_num(pop, nan=0.0).clip(min=0.0)
        self.max_k = min(max_k, self.vocab.n_items)
        self.max_history = self._history_window(max_history)
        self.shortlist = int(shortlist)  # GenerationConfig.shortlist, raised to a group's page size
        if users is not None:
            check_users(self.item_ids, self.vocab.n_users, users, str(ckpt.path))

    @classmethod
    def load(cls, path: str | Path, users: UserHistories | None = None, **kw) -> "Ranker":
        """Load (sha256-verified) and wrap a checkpoint directory."""
        return cls(load_checkpoint(path), users, **kw)

    # ------------------------------------------------------------------ description

    @property
    def id(self) -> str:
        return self.ckpt.id

    @property
    def stage(self) -> str:
        return self.ckpt.stage

    def describe(self) -> dict:
        """What ``GET /v1/model`` reports about the checkpoint (JSON-safe)."""
        m = self.ckpt.manifest
        return {
            "id": m["id"], "stage": m["stage"], "created": m.get("created"), "path": str(self.ckpt.path),
            "metrics": _json_safe(m.get("metrics") or {}), "parent": m.get("parent"),
            "data_fingerprint": m.get("data_fingerprint"), "n_items": self.vocab.n_items,
            "max_k": self.max_k, "max_history": self.max_history, "shortlist": self.shortlist,
            "known_users": len(self.users) if self.users is not None else 0,
        }

    # ------------------------------------------------------------------ ranking

    def rank(self, requests: Sequence[RankRequest]) -> list[Page | RequestError]:
        """One :class:`Page` per request, or the :class:`RequestError` that request earned.

        A bad request never spoils the others of the same call.
        """
        out: list[Page | RequestError | None] = [None] * len(requests)
        jobs: list[_Job] = []
        for i, req in enumerate(requests):
            try:
                jobs.append(self.resolve(req, i))
            except RequestError as e:
                out[i] = e
        for job in jobs:
            if job.source == "popularity":
                out[job.index] = self._popularity_page(job)
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            if job.source != "popularity":
                groups.setdefault(_group_key(job), []).append(job)
        for group in groups.values():
            for job, page in zip(group, self._decode(group)):
                out[job.index] = page
        return out  # type: ignore[return-value]

    def resolve(self, req: RankRequest, index: int = 0) -> _Job:
        """Check a request against the catalogue and find its history."""
        if (req.user_id is None) == (req.history is None):
            raise RequestError("give exactly one of user_id and history", field="user_id")
        if not 1 <= req.k <= self.max_k:
            raise RequestError(f"k must be in [1, {self.max_k}], got {req.k}", field="k")
        if req.strategy not in STRATEGIES:
            raise RequestError(f"strategy must be one of {list(STRATEGIES)}, got {req.strategy!r}", field="strategy")
        if not MIN_TEMPERATURE <= req.temperature <= MAX_TEMPERATURE:  # NaN fails too
            raise RequestError(f"temperature must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {req.temperature}",
                               field="temperature")
        if req.top_k < 0:
            raise RequestError(f"top_k must be >= 0, got {req.top_k}", field="top_k")
        unknown: list[str] = []
        history = self._indices(req.history or [], unknown)
        exclude = self._indices(req.exclude, unknown)
        candidates = None if req.candidates is None else self._indices(req.candidates, unknown)
        if unknown:
            shown = sorted(set(unknown))
            more = f" (and {len(shown) - 20} more)" if len(shown) > 20 else ""
            raise RequestError(f"unknown item id(s) {shown[:20]}{more}: not in the catalogue of checkpoint "
                               f"{self.id}", field="items", items=shown)
        notes: list[str] = []
        user_idx = None
        if req.user_id is not None:
            known = self.users.get(req.user_id) if self.users is not None else None
            if known is None:
                why = "no user data was given at start" if self.users is None else "not in the user data"
                notes.append(f"unknown user_id {req.user_id!r} ({why}): popularity page")
                history, source = [], "popularity"
            else:
                user_idx = prompt_user(self.vocab, known[0])
                history, source = known[1].tolist(), "user_history"
        else:
            source = "request_history" if history else "popularity"
        return _Job(index, history, user_idx, exclude, candidates, req.k, source, req, notes)

    def _indices(self, ids: Sequence[str], unknown: list[str]) -> list[int]:
        out = []
        for i in ids:
            n = self.index.get(str(i))
            if n is None:
                unknown.append(str(i))
            else:
                out.append(n)
        return out

    @torch.no_grad()
    def _decode(self, jobs: list[_Job]) -> list[Page]:
        """Decode one group (same strategy / sampling settings / user-token use) in one batch."""
        req = jobs[0].req
        prompts = build_prompts(
            [j.history for j in jobs], self.vocab, self.max_history, exclude_seen=True,
            exclude=[j.exclude for j in jobs], candidates=[j.candidates for j in jobs],
            user_idx=[j.user_idx for j in jobs],
        )
        k = max(j.k for j in jobs)
        gen = GenerationConfig(page_size=k, strategy=req.strategy, temperature=req.temperature, top_k=req.top_k,
                               max_history=self.max_history, shortlist=max(self.shortlist, k) if self.shortlist else 0)
        generator = torch.Generator().manual_seed(req.seed) if req.seed is not None else None
        pages = generate_pages(self.model, self.vocab, prompts, gen, generator=generator)
        items, logps = pages.items.tolist(), pages.logprobs.tolist()
        out = []
        for b, job in enumerate(jobs):
            slots = [(i, lp) for i, lp in zip(items[b][: job.k], logps[b][: job.k]) if i >= 0]
            out.append(self._page(job, [i for i, _ in slots], [lp for _, lp in slots]))
        return out

    def _popularity_page(self, job: _Job) -> Page:
        """Most popular allowed items; score = log p under popularity + 1, renormalised per slot."""
        allowed = np.ones(self.vocab.n_items, dtype=bool)
        allowed[job.exclude] = False
        if job.candidates is not None:
            only = np.zeros_like(allowed)
            only[job.candidates] = True
            allowed &= only
        idx = np.flatnonzero(allowed)
        weight = self.popularity[idx] + 1.0
        order = np.argsort(-weight, kind="stable")  # ties: lower item_idx first
        chosen, w = idx[order][: job.k], weight[order]
        remaining = w.sum() - np.concatenate([[0.0], np.cumsum(w)[:-1]])  # mass left before each slot
        scores = (np.log(w[: job.k]) - np.log(remaining[: job.k])).tolist()
        return self._page(job, chosen.tolist(), scores)

    def _page(self, job: _Job, items: list[int], scores: list[float]) -> Page:
        notes = list(job.notes)
        if len(items) < job.k:
            notes.append(f"only {len(items)} item(s) allowed by history/exclude/candidates; asked for {job.k}")
        return Page(
            items=[self.item_ids[i] for i in items], titles=[self.titles[i] for i in items],
            scores=[s if math.isfinite(s) else SCORE_FLOOR for s in scores],
            source=job.source, checkpoint_id=self.id, stage=self.stage, notes=notes,
        )

    # ------------------------------------------------------------------ checks

    def _history_window(self, requested: int) -> int:
        """Prompt history length: the server's setting or else the checkpoint's prompt (what it was
        trained with), never so long that prompt + page overflows the model's positions."""
        want = requested or int(prompt_of(self.ckpt.manifest, DEFAULT_MAX_HISTORY)["max_history"])
        cfg = self.model.config
        n_pos = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        if n_pos is None:
            return want
        head = 3 + (1 if self.vocab.n_users else 0)  # <bos> [<user>] <hist> ... <page>
        room = int(n_pos) - head - self.max_k
        if room < 1:
            raise CheckpointError(f"{self.ckpt.path}: the model has {n_pos} positions, too few for pages of "
                                  f"max_k={self.max_k}; lower max_k")
        return min(want, room)


def check_users(item_ids: list[str], n_user_tokens: int, users: UserHistories, where: str) -> None:
    """The user data must have exactly the checkpoint's catalogue (and users, with user tokens)."""
    detail = catalog_mismatch(item_ids, users.item_ids)
    if detail:
        raise CheckpointError(f"user data {users.path} does not match the catalogue of checkpoint {where}: "
                              f"{detail}")
    if n_user_tokens and n_user_tokens != len(users):
        raise CheckpointError(f"checkpoint {where} has {n_user_tokens} user tokens but the user data "
                              f"{users.path} has {len(users)} users")


def _group_key(job: _Job) -> tuple:
    """Jobs with equal keys are decoded in one batch with identical results to decoding alone."""
    r = job.req
    users = job.user_idx is not None
    if r.strategy == "greedy":
        return ("greedy", users)
    if r.seed is not None:
        return ("seeded", job.index)  # its own generator: the page depends on nothing else
    return ("sample", float(r.temperature), int(r.top_k), users)


def _json_safe(obj):
    """Replace NaN/inf floats (allowed in manifests, not in JSON responses) by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj

