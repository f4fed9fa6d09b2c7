"""The process that owns the model: build its context once (model, stores, bookkeeping), start heartbeating
when Celery is ready, and let go at shutdown. Celery's signals call in here (``worker.celery_app``).

A worker that cannot load its model logs why and exits with ``EXIT_MODEL_LOAD_FAILED`` before consuming any
job and before its first heartbeat, so /readyz never counts it and an orchestrator sees a crash loop instead
of a worker that fails every job.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import redis

from common.blobstore import make_blobstore
from common.connections import connect
from common.job_store import JobStore
from common.webhook_outbox import Outbox
from common.workers import WorkerRegistry
from worker.batching import Batcher
from worker.config import WorkerSettings, get_worker_settings
from worker.context import WorkerContext
from worker.heartbeat import Heartbeat
from worker.loading import load_pipeline, publish_capabilities
from worker.metrics import WorkerMetrics, get_metrics
from worker.notify import WebhookSender
from worker.recovery import Ownership, Publish

log = logging.getLogger(__name__)

EXIT_MODEL_LOAD_FAILED = 3

_context: WorkerContext | None = None


def make_batcher(settings: WorkerSettings, client: redis.Redis, store: JobStore) -> Batcher | None:
    if settings.batch_max_size <= 1:
        return None
    return Batcher(
        client,
        store,
        settings.worker_id,
        settings.queue_name,
        settings.task_name,
        settings.batch_max_size,
        settings.batch_max_wait_s,
    )


def build_context(
    settings: WorkerSettings, publish: Publish, metrics: WorkerMetrics | None = None
) -> WorkerContext:
    """Load the model and connect the stores; ``publish`` re-enqueues a job (dead-worker recovery)."""
    metrics = metrics or get_metrics()
    started = time.perf_counter()
    pipeline, options_factory = load_pipeline(settings)
    load_s = time.perf_counter() - started
    metrics.model_load.set(load_s)
    if pipeline.graphs is not None:
        metrics.watch_graphs(pipeline.graphs)
    client = connect(settings)
    publish_capabilities(client, pipeline)
    store = JobStore(client, settings)
    return WorkerContext(
        settings=settings,
        store=store,
        blobs=make_blobstore(settings, client),
        workers=WorkerRegistry(client),
        batcher=make_batcher(settings, client, store),
        ownership=Ownership(client, store, settings.worker_id, settings.job_ttl_seconds, publish),
        pipeline=pipeline,
        options_factory=options_factory,
        metrics=metrics,
        webhooks=WebhookSender(
            Outbox(client, settings.webhook_lease_s),
            settings,
            lambda outcome: metrics.webhooks.labels(outcome=outcome).inc(),
            settings.worker_webhook_threads,
        ),
        model_load_s=load_s,
    )


def start_process(publish: Publish, settings: WorkerSettings | None = None) -> WorkerContext:
    """worker_process_init: metrics endpoint, then the model. Exits the process if the model cannot load."""
    global _context
    if _context is not None:
        return _context
    settings = settings or get_worker_settings()
    metrics = get_metrics()
    metrics.serve(settings.worker_metrics_port, settings.worker_metrics_addr)
    log.info(
        "loading DiffBIR pipeline preset=%s version=%s device=%s precision=%s weights=%s",
        settings.worker_preset,
        settings.worker_version,
        settings.worker_device,
        settings.worker_precision,
        settings.weights_dir,
    )
    try:
        _context = build_context(settings, publish, metrics)
    except BaseException as exc:
        log.critical("worker cannot load its model, exiting: %s", exc, exc_info=True)
        print(
            f"FATAL: diffbir worker cannot load its model: {type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        logging.shutdown()
        os._exit(EXIT_MODEL_LOAD_FAILED)
    log.info("pipeline loaded in %.1fs", _context.model_load_s)
    return _context


def mark_ready(publish: Publish) -> None:
    """worker_ready: the model is loaded and the consumer is up; start heartbeating."""
    ctx = context(publish)
    if ctx.heartbeat is not None:
        return
    ctx.heartbeat = Heartbeat(
        ctx.workers,
        ctx.settings.worker_id,
        ctx.settings.worker_heartbeat_interval_s,
        on_beat=_recover_lost_jobs,
    )
    ctx.heartbeat.start()
    if ctx.webhooks is not None:
        ctx.webhooks.start()
    log.info(
        "worker %s ready; heartbeating every %.1fs",
        ctx.settings.worker_id,
        ctx.settings.worker_heartbeat_interval_s,
    )


def _recover_lost_jobs() -> None:
    """Heartbeat housekeeping: requeue the jobs of workers that stopped heartbeating."""
    ctx = _context
    if ctx is None:
        return
    max_age = ctx.settings.worker_heartbeat_max_age_s
    if ctx.ownership is not None:
        ctx.ownership.requeue_from_dead_workers(max_age)
    if ctx.batcher is not None:
        ctx.batcher.recover_dead_workers(max_age)


def shutdown() -> None:
    """worker_shutdown: deregister, and stop sending webhooks."""
    if _context is None:
        return
    if _context.heartbeat is not None:
        _context.heartbeat.stop()
        _context.heartbeat = None
    if _context.webhooks is not None:
        # A POST in flight may finish; one cut short is retried by another worker once its lease ends.
        _context.webhooks.stop(timeout_s=_context.settings.webhook_timeout_s + 1)


def context(publish: Publish) -> WorkerContext:
    """The process's context; loads the model on first use (e.g. a task run outside the solo worker)."""
    return _context if _context is not None else start_process(publish)
