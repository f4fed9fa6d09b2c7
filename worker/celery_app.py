"""The worker's Celery app: the shared send-side config (common.queue) plus the consume-side settings.

Importing this module is cheap (no torch): the model is loaded in ``worker_process_init``, which Celery sends
in the process that will run tasks (the solo pool's only process, or each forked child of a prefork pool, so
CUDA is never initialised before a fork). A worker whose model fails to load exits non-zero before it
consumes anything and before its first heartbeat; heartbeats start at ``worker_ready``.

Why the solo pool: one process owns one GPU and one copy of the weights; concurrency on a GPU comes from
batching, not from processes. Celery does not enforce time limits in the solo pool, so ``worker.execution``
enforces them itself (soft: checked at every sampler step; hard: a watchdog that fails the job and exits).

The signal handlers hand ``publish_restore`` to ``worker.runner`` (dead-worker recovery re-enqueues jobs with
it), so the runner never imports this module back.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery, signals
from kombu import Queue

from common.connections import connect
from common.queue import enqueue_restore_front, make_celery
from worker import job_trace, runner
from worker.config import WorkerSettings, get_worker_settings

log = logging.getLogger(__name__)


def make_worker_app(settings: WorkerSettings) -> Celery:
    app = make_celery(settings)
    transport = dict(app.conf.broker_transport_options or {})
    transport.update(
        visibility_timeout=settings.broker_visibility_timeout_s,
        # Sweep for unacked messages of dead workers on every sweep tick, not every 10th one.
        unacked_restore_interval=settings.broker_restore_interval_s,
        unacked_restore_throttle=1,
    )
    app.conf.update(
        include=["worker.tasks"],
        task_queues=(Queue(settings.queue_name, routing_key=settings.queue_name),),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Enforced by worker.execution itself in the solo pool (Celery does not there); set for the record.
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_hard_time_limit_s,
        # A task that failed on purpose recorded it in the job; the message must not loop forever.
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # wait for Redis to come back rather than exit
        broker_heartbeat=None,
        broker_transport_options=transport,
    )
    return app


app = make_worker_app(get_worker_settings())


_broker_client: redis.Redis | None = None


def publish_restore(job_id: str) -> object:
    """Enqueue ``diffbir.restore(job_id)`` again at the FRONT of the queue (the job was lost or handed back:
    it has waited its turn already)."""
    global _broker_client
    settings = get_worker_settings()
    if _broker_client is None:
        _broker_client = connect(settings)
    return enqueue_restore_front(app, settings, _broker_client, job_id)


@signals.worker_process_init.connect
def _load_model(**_: Any) -> None:
    job_trace.setup_process(get_worker_settings())  # tracing (if configured) before any job runs
    runner.start_process(publish_restore)


@signals.worker_ready.connect
def _start_heartbeat(**_: Any) -> None:
    runner.mark_ready(publish_restore)


@signals.worker_shutting_down.connect
def _begin_shutdown(**_: Any) -> None:
    runner.begin_shutdown()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    runner.shutdown()
