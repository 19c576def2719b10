"""The FastAPI application: routes, error mapping and the request-body limit.

It talks to a *service* (the Serve deployment in :mod:`rlhf_ray.serve.app`) through
four methods, so it holds no model and no Ray code:

    async rank(RankRequest) -> (Page, {stage: ms})   raises RequestError for a bad request
    observe({stage: ms});  async health() -> dict;  async model_info() -> dict;  stats() -> dict

Status codes: 200 page; 413 body over ``max_body_bytes``; 415 a Content-Type other
than JSON; 422 anything else wrong with the request (not JSON: NaN, Infinity, bad
UTF-8, ...; schema; k out of range; unknown item ids named in ``unknown_items``). A
5xx means a bug or an unavailable replica, never a bad request.
"""
from __future__ import annotations

import time
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from rlhf_ray.config import ServeConfig
from rlhf_ray.serve.body import read_body
from rlhf_ray.serve.ranker import Page, RankRequest, RequestError
from rlhf_ray.serve.schemas import ErrorBody, Health, ModelInfo, RankBody, RankResponse, Stats


class RankService(Protocol):
    cfg: ServeConfig

    async def rank(self, req: RankRequest) -> tuple[Page, dict[str, float]]: ...

    def observe(self, stages_ms: dict[str, float]) -> None: ...

    async def health(self) -> dict: ...

    async def model_info(self) -> dict: ...

    def stats(self) -> dict: ...


class BodyLimit:
    """ASGI middleware: answer 413 to a request body over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._too_large(scope, send)
        # Read the (small) body up front so a stream without Content-Length is bounded too.
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._too_large(scope, send)
            chunks.append(chunk)
            more = msg.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, send) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, status_code=413)
        await response(scope, None, send)


def build_api(service: RankService) -> FastAPI:
    """The ASGI app for one replica; routes call ``service``."""
    cfg = service.cfg
    app = FastAPI(
        title="rlhf-ray ranker",
        version="1",
        description="Whole-page recommendations from a rlhf-ray checkpoint: POST /v1/rank writes a page "
                    "of k catalogue items for a user or a history.",
    )

    @app.exception_handler(RequestError)
    async def _request_error(_, exc: RequestError):
        body = ErrorBody(detail=str(exc), field=exc.field, unknown_items=exc.items)
        return JSONResponse(body.model_dump(), status_code=exc.status)

    # The body is read by rlhf_ray.serve.body (strict JSON), not by FastAPI: documented here.
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": RankBody.model_json_schema(ref_template="#/components/schemas/{model}")}}}}

    @app.post("/v1/rank", response_model=RankResponse, openapi_extra=body_doc,
              responses={413: {"model": ErrorBody}, 415: {"model": ErrorBody}, 422: {"model": ErrorBody}})
    async def rank(request: Request) -> Response:
        t0 = time.perf_counter()
        body = read_body(RankBody, await request.body(), request.headers.get("content-type"))
        if body.k is not None and body.k > cfg.max_k:
            raise RequestError(f"k must be in [1, {cfg.max_k}], got {body.k}", field="k")
        req = body.to_request(cfg.default_k)
        t1 = time.perf_counter()
        page, stages = await service.rank(req)
        t2 = time.perf_counter()
        out = RankResponse(items=page.items, titles=page.titles, scores=page.scores, k=req.k, source=page.source,
                           checkpoint_id=page.checkpoint_id, stage=page.stage, strategy=req.strategy,
                           notes=page.notes).model_dump_json()
        t3 = time.perf_counter()
        service.observe({"parse": (t1 - t0) * 1000, **stages, "serialise": (t3 - t2) * 1000,
                         "total": (t3 - t0) * 1000})
        return Response(out, media_type="application/json")

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        return await service.health()

    @app.get("/v1/model", response_model=ModelInfo)
    async def model() -> dict:
        return await service.model_info()

    @app.get("/v1/stats", response_model=Stats)
    async def stats() -> dict:
        return service.stats()

    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    return app
