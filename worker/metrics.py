"""The worker's own Prometheus metrics, served by ``prometheus_client.start_http_server``.

Why a separate endpoint from the API: the numbers live in the worker process (one per GPU); Prometheus scrapes
each worker on ``DIFFBIR_WORKER_METRICS_PORT``. All durations are seconds, counters end in ``_total``.
Buckets reach tens of minutes because a full-size sampler run on a slow GPU can take that long.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from common.jobs import ErrorCode

log = logging.getLogger(__name__)

# Fast (ms) to slow (tens of minutes): enqueue->start latency and whole-job durations share this shape.
_WAIT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)
_JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# Accepted -> succeeded: the job SLO counts jobs under its deadline from the bucket at that deadline (600 s in
# deploy/prometheus/rules/slo.yml), so a deadline moved in the rules must be one of these bounds.
_TURNAROUND_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600)
_STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)
_GIB = 1024**3
_MEMORY_BUCKETS = tuple(g * _GIB for g in (0.5, 1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 141))

# Stages the pipeline reports in RestoreResult.timings plus the worker's own decode/encode.
STAGES = ("decode", "stage1", "vae_encode", "sampler", "vae_decode", "postprocess", "encode_output")


def watch_outbox(gauge: Gauge, pending: Callable[[], int]) -> None:
    """Read the outbox size when Prometheus scrapes (NaN while Redis does not answer)."""

    def read() -> float:
        try:
            return float(pending())
        except Exception as exc:  # a scrape must not fail because Redis is away
            log.debug("webhook outbox size unavailable: %s", exc)
            return float("nan")

    gauge.set_function(read)


class WorkerMetrics:
    """All worker metrics on one registry (tests build their own so they never collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter(
            "diffbir_worker_jobs_total", "Jobs finished by this worker.", ["status", "reason"], registry=r
        )
        # Every outcome is exported at 0 from the start: a series born at its first job would lose that job
        # in rate(), and the SLO's and the alerts' failure ratios with it.
        self.jobs.labels(status="succeeded", reason="")
        for code in ErrorCode:
            self.jobs.labels(status="canceled" if code is ErrorCode.canceled else "failed", reason=code.value)
        self.queue_wait = Histogram(
            "diffbir_worker_queue_wait_seconds",
            "Enqueue (job created) to start on a worker.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.job_duration = Histogram(
            "diffbir_worker_job_duration_seconds",
            "Start to finish of one job on the worker.",
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.turnaround = Histogram(
            "diffbir_worker_job_turnaround_seconds",
            "Accepted by the API to succeeded (queue wait, every attempt, result stored); successes only.",
            buckets=_TURNAROUND_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "diffbir_worker_stage_duration_seconds",
            "Per-stage durations.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.sampler_step = Histogram(
            "diffbir_worker_sampler_step_duration_seconds",
            "Duration of one sampler step.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.sampler_total = Histogram(
            "diffbir_worker_sampler_duration_seconds",
            "Whole sampler loop of one job.",
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.model_load = Gauge("diffbir_worker_model_load_seconds", "Time to load the pipeline.", registry=r)
        self.gpu_peak_memory = Histogram(
            "diffbir_worker_gpu_peak_memory_bytes",
            "CUDA peak memory of one job.",
            buckets=_MEMORY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "diffbir_worker_batch_size",
            "Jobs run together in one model call.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=r,
        )
        self.webhooks = Counter(
            "diffbir_worker_webhook_deliveries_total",
            "Webhook deliveries by outcome.",
            ["outcome"],
            registry=r,
        )
        self.webhook_outbox = Gauge(
            "diffbir_worker_webhook_outbox_messages",
            "Webhook messages in the shared outbox (due, being sent, or waiting for a retry); read from "
            "Redis at scrape time, the same value on every worker.",
            registry=r,
        )
        self.busy = Gauge("diffbir_worker_busy", "1 while a job is running.", registry=r)
        self.redeliveries = Counter(
            "diffbir_worker_redeliveries_total", "Jobs started again after a lost worker.", registry=r
        )

        self.cuda_graphs = Gauge(
            "diffbir_worker_cuda_graphs",
            "CUDA graphs held by the pipeline (one per net and input shape).",
            registry=r,
        )
        self.cuda_graph_captures = Gauge(
            "diffbir_worker_cuda_graph_captures",
            "CUDA graph captures since the worker started (a steady value means shapes are reused).",
            registry=r,
        )
        self.cuda_graph_failures = Gauge(
            "diffbir_worker_cuda_graph_failures",
            "Shapes whose CUDA graph capture failed and which run eagerly.",
            registry=r,
        )
        self.cuda_graph_pool = Gauge(
            "diffbir_worker_cuda_graph_pool_bytes",
            "GPU memory the CUDA graphs' pool added to the allocator cache.",
            registry=r,
        )

    def watch_graphs(self, graphs: Any) -> None:
        """Read the pipeline's `CudaGraphs` at scrape time (duck-typed: metrics never import torch)."""
        self.cuda_graphs.set_function(lambda: graphs.num_graphs)
        self.cuda_graph_captures.set_function(lambda: graphs.stats.captures)
        self.cuda_graph_failures.set_function(lambda: graphs.stats.failures)
        self.cuda_graph_pool.set_function(lambda: graphs.stats.pool_bytes)

    def observe_stages(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            if stage in STAGES:
                self.stage_duration.labels(stage=stage).observe(max(0.0, float(seconds)))
        if "sampler" in timings:
            self.sampler_total.observe(max(0.0, float(timings["sampler"])))

    def serve(self, port: int, addr: str = "0.0.0.0") -> bool:
        """Start the HTTP endpoint; False (logged) if the port is taken: a metrics clash never kills jobs."""
        if port <= 0:
            return False
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            log.error("worker metrics endpoint not started on %s:%d: %s", addr, port, exc)
            return False
        log.info("worker metrics on http://%s:%d/metrics", addr, port)
        return True


_metrics: WorkerMetrics | None = None


def get_metrics() -> WorkerMetrics:
    """Process-wide metrics, created on first use."""
    global _metrics
    if _metrics is None:
        _metrics = WorkerMetrics()
    return _metrics
