"""Heartbeats in the workers zset, and the worker's own Prometheus endpoint."""

from __future__ import annotations

import socket
import time

import httpx
import redis

from common.keys import WORKERS_KEY
from common.workers import WorkerRegistry
from tests.conftest import free_port
from worker.heartbeat import Heartbeat
from worker.metrics import WorkerMetrics


def test_heartbeat_registers_survives_housekeeping_errors_and_deregisters(redis_client: redis.Redis) -> None:
    calls: list[float] = []

    def flaky_housekeeping() -> None:
        calls.append(time.time())
        raise RuntimeError("broker away")

    beat = Heartbeat(WorkerRegistry(redis_client), "w-hb", 0.05, on_beat=flaky_housekeeping)
    beat.start()
    try:
        first = redis_client.zscore(WORKERS_KEY, "w-hb")
        assert first is not None
        deadline = time.monotonic() + 5
        while (redis_client.zscore(WORKERS_KEY, "w-hb") or 0) <= first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (redis_client.zscore(WORKERS_KEY, "w-hb") or 0) > first  # kept beating despite the errors
        assert len(calls) >= 2
    finally:
        beat.stop()
    assert redis_client.zscore(WORKERS_KEY, "w-hb") is None


def test_metrics_endpoint_serves_worker_metrics() -> None:
    metrics = WorkerMetrics()
    metrics.jobs.labels(status="failed", reason="timeout").inc()
    metrics.observe_stages({"decode": 0.01, "sampler": 95.0, "encode_output": 0.02, "ignored": 1.0})
    metrics.sampler_step.observe(0.12)
    metrics.model_load.set(12.5)
    port = free_port()
    assert metrics.serve(port, "127.0.0.1")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'diffbir_worker_jobs_total{reason="timeout",status="failed"} 1.0' in text
    assert 'diffbir_worker_stage_duration_seconds_count{stage="sampler"} 1.0' in text
    assert 'stage="ignored"' not in text
    assert 'diffbir_worker_sampler_duration_seconds_bucket{le="1800.0"} 1.0' in text  # buckets reach minutes
    assert "diffbir_worker_model_load_seconds 12.5" in text
    assert "diffbir_worker_queue_wait_seconds_bucket" in text


def test_metrics_port_clash_does_not_raise() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert WorkerMetrics().serve(sock.getsockname()[1], "127.0.0.1") is False
    assert WorkerMetrics().serve(0) is False


def test_cuda_graph_gauges_read_the_pipeline_at_scrape_time() -> None:
    from prometheus_client import generate_latest

    from model.graphs import CudaGraphs

    metrics = WorkerMetrics()
    graphs = CudaGraphs(device="cpu", capture=lambda fn: (fn(), lambda: None))  # type: ignore[arg-type]
    metrics.watch_graphs(graphs)
    assert b"diffbir_worker_cuda_graph_captures 0.0" in generate_latest(metrics.registry)
    import torch

    cache = graphs.cache("net", object(), lambda x: x + 1)
    with torch.no_grad():
        cache(torch.ones(2))
    graphs.stats.pool_bytes = 1024
    text = generate_latest(metrics.registry)
    assert b"diffbir_worker_cuda_graphs 1.0" in text
    assert b"diffbir_worker_cuda_graph_captures 1.0" in text
    assert b"diffbir_worker_cuda_graph_pool_bytes 1024.0" in text
    assert b"diffbir_worker_cuda_graph_failures 0.0" in text
