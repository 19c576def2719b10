"""Where a served request's time goes, per stage, exported as Serve (Prometheus) metrics.

Stages of one ``POST /v1/rank`` in the replica (milliseconds):

* ``parse``: body read, strict JSON, schema, up to handing the request to the batcher;
* ``queue``: waiting for the model to be free (earlier batches running);
* ``batch_wait``: waiting for more requests to share the batch;
* ``model``: the batch's ranking (prompts, decoding, pages), shared by its requests;
* ``handoff``: getting the batch to the model and the pages back: a worker thread of the
  replica, or with ``separate_model`` one Ray call to a ``RankerModel`` replica;
* ``serialise``: the page to response bytes;
* ``total``: route entry to response bytes (the sum of the above plus scheduling gaps).

Exported through ``ray.serve.metrics`` (Serve adds deployment, replica and application
tags; Ray's metrics agent serves them to Prometheus at the ``metrics_export_port``):
``rlhf_ray_rank_stage_ms`` histogram (tag ``stage``) and ``rlhf_ray_rank_batch_size``
histogram. ``GET /v1/stats`` has running sums and the count, so a client can take the mean
of each stage over any interval from two snapshots.
"""
from __future__ import annotations

STAGES = ("parse", "queue", "batch_wait", "model", "handoff", "serialise", "total")
STAGE_BOUNDARIES_MS = [0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


class LatencyMetrics:
    """Per-request stage times: Serve histograms plus running sums (see module docstring)."""

    def __init__(self):
        from ray.serve.metrics import Histogram

        self.stage_ms = Histogram("rlhf_ray_rank_stage_ms", description="Time of one rank request in each stage "
                                  "of the replica (ms): parse, queue, batch_wait, model, handoff, serialise, total.",
                                  boundaries=STAGE_BOUNDARIES_MS, tag_keys=("stage",))
        self.batch_size = Histogram("rlhf_ray_rank_batch_size", description="Requests per decoded batch.",
                                    boundaries=BATCH_BOUNDARIES)
        self.sum_ms = {s: 0.0 for s in STAGES}
        self.count = 0

    def observe(self, stages: dict[str, float]) -> None:
        for stage, ms in stages.items():
            self.stage_ms.observe(ms, tags={"stage": stage})
            self.sum_ms[stage] += ms
        self.count += 1

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def snapshot(self) -> dict:
        return {"timed_requests": self.count, "stage_ms_sum": dict(self.sum_ms)}
