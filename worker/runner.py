"""The process that owns the model: build its context once (model, stores, bookkeeping), start heartbeating
and renewing its lease when Celery is ready, and let go at shutdown. Celery's signals call in here
(``worker.celery_app``).

Shutdown: on SIGTERM Celery stops taking messages and lets the running task finish (a warm shutdown);
``begin_shutdown`` bounds that by ``worker_shutdown_grace_s``, after which the jobs still held are handed back
to the front of the queue and the process exits, so a deploy or a scale-down never waits on a long job and
never leaves it for the dead-worker recovery.

A worker that cannot load its model logs why and exits with ``EXIT_MODEL_LOAD_FAILED`` before consuming any
job and before its first heartbeat, so /readyz never counts it and an orchestrator sees a crash loop instead
of a worker that fails every job.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

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
from worker.lease import LeaseKeeper
from worker.loading import load_pipeline, publish_capabilities
from worker.metrics import WorkerMetrics, get_metrics, watch_outbox
from worker.notify import WebhookSender
from worker.outbox import OutboxSweeper
from worker.recovery import Ownership, Publish

log = logging.getLogger(__name__)

EXIT_MODEL_LOAD_FAILED = 3

_context: WorkerContext | None = None
_shutdown_timer: threading.Timer | None = None


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
    outbox = Outbox(client, settings.webhook_lease_s)
    watch_outbox(metrics.webhook_outbox, outbox.pending)
    return WorkerContext(
        settings=settings,
        store=store,
        blobs=make_blobstore(settings, client),
        workers=WorkerRegistry(client),
        batcher=make_batcher(settings, client, store),
        ownership=Ownership(client, store, settings.worker_id, settings.job_ttl_seconds, publish),
        outbox=OutboxSweeper(
            client, store, settings.queue_name, settings.worker_id, publish, settings.worker_outbox_grace_s
        ),
        pipeline=pipeline,
        options_factory=options_factory,
        metrics=metrics,
        webhooks=WebhookSender(
            outbox,
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
    _hand_back_leftovers(_context)
    return _context


def _hand_back_leftovers(ctx: WorkerContext) -> None:
    """Jobs held under this worker id by an earlier process (a restart keeping hostname and pid, as in a
    container) are nobody's now: hand them back before taking new ones."""
    if ctx.ownership is None:
        return
    try:
        if count := ctx.ownership.hand_back_all():
            log.warning("handed back %d job(s) of an earlier process of %s", count, ctx.settings.worker_id)
    except redis.RedisError as exc:  # their lease has lapsed: another worker's recovery requeues them
        log.warning("could not hand back earlier jobs of %s: %s", ctx.settings.worker_id, exc)


def mark_ready(publish: Publish) -> None:
    """worker_ready: the model is loaded and the consumer is up; start heartbeating."""
    ctx = context(publish)
    if ctx.heartbeat is not None:
        return
    ctx.lease = LeaseKeeper(
        ctx.workers, ctx.settings.worker_id, ctx.settings.worker_lease_ttl_s, housekeeping(ctx)
    )
    ctx.lease.start()
    ctx.heartbeat = Heartbeat(ctx.workers, ctx.settings.worker_id, ctx.settings.worker_heartbeat_interval_s)
    ctx.heartbeat.start()
    if ctx.webhooks is not None:
        ctx.webhooks.start()
    log.info(
        "worker %s ready; heartbeating every %.1fs, lease %.1fs",
        ctx.settings.worker_id,
        ctx.settings.worker_heartbeat_interval_s,
        ctx.settings.worker_lease_ttl_s,
    )


def housekeeping(ctx: WorkerContext) -> list[Callable[[], object]]:
    """What the lease thread runs on every tick: recovery of other workers' jobs, the outbox sweep, and
    the hand-back of jobs this worker could not record through an outage."""
    tasks: list[Callable[[], object]] = [lambda: hand_back_later(ctx)]
    if ctx.ownership is not None:
        tasks.append(ctx.ownership.requeue_from_dead_workers)
        tasks.append(ctx.ownership.keep_holder_entry)
        tasks.append(lambda: hand_back_strays(ctx))
    if ctx.batcher is not None:
        tasks.append(ctx.batcher.recover_dead_workers)
    if ctx.outbox is not None:
        tasks.append(ctx.outbox.sweep)
    return tasks


def hand_back_later(ctx: WorkerContext) -> None:
    """Hand back the jobs whose outcome could not be recorded (storage away past the finish deadline)."""
    if ctx.ownership is None:
        ctx.hand_back_later.clear()
        return
    for job_id in sorted(ctx.hand_back_later):
        ctx.ownership.hand_back(job_id)
        ctx.hand_back_later.discard(job_id)
        log.warning("job %s handed back to the queue after a storage outage", job_id)


def hand_back_strays(ctx: WorkerContext) -> None:
    """Jobs Redis says this worker holds but this process is not running (a release or a final status lost
    in a Redis failover, a start cut short by an outage) would wait forever behind our live lease: hand
    back those seen stray on two ticks in a row (one tick could race a claim being registered)."""
    if ctx.ownership is None:
        return
    strays = set(ctx.ownership.held()) - ctx.running
    for job_id in sorted(strays & ctx.strays):
        if ctx.ownership.hand_back(job_id):
            log.warning("job %s was held but not running here; handed back", job_id)
    ctx.strays = strays


def begin_shutdown() -> None:
    """worker_shutting_down (SIGTERM): Celery takes no new message and finishes the current task; past
    ``worker_shutdown_grace_s`` the held jobs go back to the front of the queue and the process exits."""
    global _shutdown_timer
    ctx = _context
    if ctx is None or _shutdown_timer is not None:
        return
    grace = ctx.settings.worker_shutdown_grace_s
    log.warning("shutting down: finishing the current job within %.0fs, then handing it back", grace)
    _shutdown_timer = threading.Timer(grace, _hand_back_and_exit, args=(ctx,))
    _shutdown_timer.daemon = True
    _shutdown_timer.start()


def _hand_back_and_exit(ctx: WorkerContext) -> None:
    handed = 0
    try:
        if ctx.ownership is not None:
            handed = ctx.ownership.hand_back_all()
        if ctx.batcher is not None:
            ctx.batcher.requeue_all()
    except redis.RedisError as exc:  # the lease lapses once we are gone: recovery requeues them
        log.error("could not hand back held jobs at shutdown: %s", exc)
    grace = ctx.settings.worker_shutdown_grace_s
    log.warning("shutdown grace of %.0fs over: handed back %d job(s); exiting", grace, handed)
    _stop_beating(ctx)
    for handler in logging.getLogger().handlers:
        handler.flush()
    ctx.exit_process(0)


def _stop_beating(ctx: WorkerContext) -> None:
    if ctx.lease is not None:
        ctx.lease.stop()
        ctx.lease = None
    if ctx.heartbeat is not None:
        ctx.heartbeat.stop()
        ctx.heartbeat = None


def shutdown() -> None:
    """worker_shutdown: drop the lease, deregister, and stop sending webhooks."""
    global _shutdown_timer
    if _context is None:
        return
    if _shutdown_timer is not None:
        _shutdown_timer.cancel()
        _shutdown_timer = None
    _stop_beating(_context)
    if _context.webhooks is not None:
        # A POST in flight may finish; one cut short is retried by another worker once its lease ends.
        _context.webhooks.stop(timeout_s=_context.settings.webhook_timeout_s + 1)


def context(publish: Publish) -> WorkerContext:
    """The process's context; loads the model on first use (e.g. a task run outside the solo worker)."""
    return _context if _context is not None else start_process(publish)
