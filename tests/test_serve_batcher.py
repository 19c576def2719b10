"""The replica's batcher (pure asyncio): batches fill from the queue while the model is busy,
counted, never timed."""
import asyncio
import threading
import time

import pytest

from rlhf_ray.serve.batcher import Batcher


def threaded(fn):
    """The batcher's ``run`` for a synchronous batch function: in a worker thread, timed."""
    def timed(items):
        t0 = time.perf_counter()
        out = fn(items)
        return out, time.perf_counter() - t0

    async def run(items):
        return await asyncio.to_thread(timed, items)
    return run


def _model(seconds: float, log: list):
    """A stand-in batch function: records its batches, holds the thread like a model would."""
    def run(items):
        log.append(list(items))
        time.sleep(seconds)
        return [x * 10 for x in items]
    return run


async def client(b: Batcher, c: int, n: int = 6) -> None:
    """A closed-loop client: its next request goes out when the last one is answered."""
    for r in range(n):
        await b.submit(c * 100 + r)


def test_a_burst_fills_whole_batches_in_order():
    log = []

    async def go():
        b = Batcher(threaded(_model(0.01, log)), max_batch_size=16, wait_s=0.0)
        return await asyncio.gather(*(b.submit(i) for i in range(40))), b

    out, b = asyncio.run(go())
    assert [r for r, _ in out] == [i * 10 for i in range(40)]
    assert [len(x) for x in log] == [16, 16, 8] and sum(log, []) == list(range(40))
    assert dict(b.histogram) == {16: 2, 8: 1}
    first, later = out[0][1], out[20][1]
    assert later.opened >= first.finished  # the second batch formed only once the first was done
    assert all(v >= 0 for _, t in out for v in t.stages_ms().values())


def test_the_model_time_run_reports_is_split_from_the_handoff():
    """``run`` says how long the model itself took; the rest of the call is the handoff
    (a worker thread, or a Ray call to a model replica)."""
    async def run(items):
        await asyncio.sleep(0.05)  # getting there and back
        return items, 0.01  # of which the model ran 10 ms

    async def go():
        b = Batcher(run, max_batch_size=4, wait_s=0.0)
        return await b.submit("x")

    value, timing = asyncio.run(go())
    stages = timing.stages_ms()
    assert value == "x" and stages["model"] == pytest.approx(10.0)
    assert stages["handoff"] >= 40.0 and stages["model"] + stages["handoff"] == pytest.approx(
        (timing.finished - timing.started) * 1000)


def test_closed_loop_clients_get_big_batches_without_waiting():
    """32 clients, each sending its next request when the last one returns, wait_s = 0:
    requests queue while a batch runs, so batches hold about half the clients."""
    log = []

    async def go():
        b = Batcher(threaded(_model(0.02, log)), max_batch_size=16, wait_s=0.0)
        await asyncio.gather(*(client(b, c) for c in range(32)))
        return b

    b = asyncio.run(go())
    sizes = [len(x) for x in log]
    assert sum(sizes) == 32 * 6
    assert sum(sizes) / len(sizes) >= 8, sizes


def test_a_failing_batch_fails_only_its_requests():
    calls = []

    def run(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise ValueError("boom")
        return items

    async def go():
        b = Batcher(threaded(run), max_batch_size=4, wait_s=0.0)
        first = await asyncio.gather(*(b.submit(i) for i in range(4)), return_exceptions=True)
        second = await b.submit(7)
        return first, second

    first, (value, _) = asyncio.run(go())
    assert all(isinstance(e, ValueError) for e in first) and value == 7


def test_wrong_result_count_is_an_error_and_settings_are_checked():
    async def go():
        b = Batcher(threaded(lambda items: items[:-1]), max_batch_size=4, wait_s=0.0)
        return await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)

    assert all(isinstance(e, RuntimeError) and "2 results for 3" in str(e) for e in asyncio.run(go()))
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(threaded(lambda x: x), max_batch_size=0, wait_s=0.0)


def test_a_cancelled_request_is_left_out():
    gate = threading.Event()
    log = []

    def run(items):
        log.append(list(items))
        gate.wait(5)
        return items

    async def go():
        b = Batcher(threaded(run), max_batch_size=8, wait_s=0.0)
        busy = asyncio.ensure_future(b.submit("first"))
        await asyncio.sleep(0.05)  # "first" is running; the next two queue behind it
        gone = asyncio.ensure_future(b.submit("gone"))
        kept = asyncio.ensure_future(b.submit("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        gate.set()
        return await busy, await kept

    (a, _), (c, _) = asyncio.run(go())
    assert (a, c) == ("first", "kept") and log == [["first"], ["kept"]]


def test_a_batch_waits_only_for_the_requests_in_flight():
    """wait_s is a minute, so any wait for company that should not happen hangs the test (the
    wait_for bound fails it): a lone client is served at once, 8 closed-loop clients get batches
    of 8 as soon as the 8th request is in, and when fewer are in flight the expectation shrinks."""
    log = []

    async def go():
        b = Batcher(threaded(_model(0.005, log)), max_batch_size=16, wait_s=60.0)
        await asyncio.wait_for(client(b, 0, 3), 20)  # alone: never waits
        lone = [len(x) for x in log]
        await asyncio.wait_for(asyncio.gather(*(client(b, c, 4) for c in range(8))), 20)
        eight, expect_after_eight = [len(x) for x in log[len(lone):]], b.expect
        b.configure(16, 0.05)  # the next lone request waits for its 7 expected companions once ...
        await asyncio.wait_for(client(b, 9, 3), 20)  # ... and then not again
        return b, lone, eight, expect_after_eight

    b, lone, eight, expect_after_eight = asyncio.run(go())
    assert lone == [1, 1, 1]
    assert sum(eight) == 32 and eight[1:] == [8] * (len(eight) - 1), eight
    assert expect_after_eight == 8 and b.expect == 1
    assert [len(x) for x in log[-3:]] == [1, 1, 1]


def test_two_groups_of_clients_merge_into_one_batch():
    """4 clients, then 4 more while the first batch runs: the late 4 queue behind it, and the
    next batch waits (from when the model is free) for the first 4 to come back instead of
    running alone, so the 8 clients end up sharing batches of 8 rather than alternating 4 and 4."""
    log = []

    async def go():
        b = Batcher(threaded(_model(0.03, log)), max_batch_size=16, wait_s=1.0)
        first = [asyncio.ensure_future(client(b, c)) for c in range(4)]
        await asyncio.sleep(0.01)  # the first batch of 4 is running
        await asyncio.wait_for(asyncio.gather(*first, *(client(b, c) for c in range(4, 8))), 30)

    asyncio.run(go())
    sizes = [len(x) for x in log]
    assert sum(sizes) == 48 and sizes[0] == 4, sizes
    # the first 4 finish a round ahead: everything between the first and the last batch is 8
    assert sizes[1:-1] == [8] * (len(sizes) - 2), sizes
