"""Dynamic batching that forms a batch only when the model is free.

Serve's ``@serve.batch`` (Ray 2.60) forms the next batch while the previous one is still
running: a batch is closed ``batch_wait_timeout_s`` after its first request and then waits
for the concurrency semaphore. Under load a batch therefore holds what arrived in one wait
window, not what queued while the model was busy (measured: batches of 3 to 5 at 32
clients). Here one loop takes a batch, runs it, and only then takes the next one, so
everything that queued meanwhile goes into it (up to ``max_batch_size``).

A batch waits for company only while it holds fewer requests than were in flight (queued,
running or being answered) during the previous batch: that is the company there is. Closed-loop
clients keep as many requests in flight as there are clients, so a lone client is answered
without waiting at all, and 8 clients' batch goes to the model when the 8th request is in, not
when ``wait_s`` runs out waiting for a 9th that never comes (before, every batch below
``max_batch_size`` waited the full ``wait_s``). While a batch holds at most half its expected
company, the wait is counted from when the model became free (or from the first request's
arrival, if later), so requests that queued behind a running batch wait, at most ``wait_s``, for
that batch's clients to come back: 8 clients then share one batch of 8 instead of alternating
two batches of 4, each of which runs while the other's requests are parsed and answered in the
same process. With more than half in, the wait counts from the first arrival, so a nearly full
batch that queued during the last run leaves at once (waiting for the last few cost about 5% of the
pages/s at 32 clients). When fewer come than expected the batch waits ``wait_s`` once.

Pure asyncio, no Ray: the deployment (:mod:`rlhf_ray.serve.app`) owns one per replica.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence


@dataclass
class Timing:
    """Where one request's time went in the batcher (``time.perf_counter`` seconds)."""

    arrived: float  # submitted
    opened: float  # its batch began collecting (the model was free and a request was there)
    started: float  # its batch went to the model
    finished: float  # the model's answer was back
    model_s: float  # of which the model itself ran (as ``run`` reports it)

    def stages_ms(self) -> dict[str, float]:
        """queue: waiting for the model to be free; batch_wait: for company; model: its batch's run;
        handoff: getting the batch to the model and its answer back (a worker thread, or a Ray call)."""
        call = max(0.0, self.finished - self.started)
        model = min(max(0.0, self.model_s), call)
        return {"queue": max(0.0, self.opened - self.arrived) * 1000,
                "batch_wait": (self.started - max(self.arrived, self.opened)) * 1000,
                "model": model * 1000, "handoff": (call - model) * 1000}


@dataclass
class _Pending:
    item: Any
    arrived: float
    future: asyncio.Future


class Batcher:
    """``await submit(item)`` -> ``(result, Timing)``; ``await run(items) -> (results, model_s)``
    runs one batch at a time (``model_s``: the seconds the model itself took, for the latency
    breakdown). An exception from ``run`` fails that batch's requests only. ``on_batch(size)``
    (optional) is called on the event loop as each batch starts."""

    def __init__(self, run: Callable[[list], Awaitable[tuple[Sequence, float]]], max_batch_size: int, wait_s: float,
                 on_batch: Callable[[int], None] | None = None):
        self.run, self.on_batch = run, on_batch
        self.configure(max_batch_size, wait_s)
        self.histogram: Counter[int] = Counter()  # batch size -> batches
        self.expect = 1  # the company the last batch waited for (see the module docstring)
        self._inflight = 0  # submitted and not yet answered (or cancelled)
        self._peak = 0  # most requests in flight since the last batch started
        self._queue: asyncio.Queue[_Pending] | None = None
        self._arrival: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def configure(self, max_batch_size: int, wait_s: float) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and wait_s >= 0, got {max_batch_size}, {wait_s}")
        self.max_batch_size, self.wait_s = int(max_batch_size), float(wait_s)

    async def submit(self, item) -> tuple[Any, Timing]:
        if self._task is None or self._task.done():
            self._queue, self._arrival = asyncio.Queue(), asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        pending = _Pending(item, time.perf_counter(), asyncio.get_running_loop().create_future())
        self._inflight += 1
        self._peak = max(self._peak, self._inflight)
        pending.future.add_done_callback(self._answered)
        self._queue.put_nowait(pending)  # type: ignore[union-attr]
        self._arrival.set()  # type: ignore[union-attr]
        return await pending.future

    def _answered(self, _future: asyncio.Future) -> None:
        self._inflight -= 1

    async def _collect(self) -> tuple[list[_Pending], float]:
        queue, arrival = self._queue, self._arrival
        assert queue is not None and arrival is not None
        batch = [await queue.get()]
        opened = time.perf_counter()
        expect = self.expect = min(max(self._peak, 1), self.max_batch_size)
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            if len(batch) >= expect:
                break
            # at most half the company in: wait from when the model became free (the other half
            # is on its way back); more than half: from the first arrival, as a full batch nearly is
            start = max(batch[0].arrived, opened) if 2 * len(batch) <= expect else batch[0].arrived
            left = start + self.wait_s - time.perf_counter()
            if left <= 0:
                break
            arrival.clear()  # no await since the empty() check: nothing can slip in between
            try:  # waiting on an event, not on queue.get(): a timeout can never lose a request
                await asyncio.wait_for(arrival.wait(), left)
            except asyncio.TimeoutError:
                break
        return batch, opened

    async def _loop(self) -> None:
        while True:
            batch, opened = await self._collect()
            self._peak = self._inflight  # this batch and what queued behind it; grows as more arrive
            batch = [p for p in batch if not p.future.cancelled()]
            if not batch:
                continue
            self.histogram[len(batch)] += 1
            if self.on_batch is not None:
                self.on_batch(len(batch))
            started = time.perf_counter()
            try:
                results, model_s = await self.run([p.item for p in batch])
                error = None if len(results) == len(batch) else RuntimeError(
                    f"batch function returned {len(results)} results for {len(batch)} requests")
            except Exception as e:  # noqa: BLE001  handed to the waiting requests
                results, model_s, error = [], 0.0, e
            finished = time.perf_counter()
            for i, p in enumerate(batch):
                if p.future.done():
                    continue
                if error is not None:
                    p.future.set_exception(error)
                else:
                    p.future.set_result((results[i], Timing(p.arrived, opened, started, finished, model_s)))
