"""The broker's send side (no torch): the Celery app config both sides share, enqueueing, queue depth.

The API enqueues ``diffbir.restore(job_id)`` on ``gpu``. The worker builds its app with
``make_celery(settings)`` too and adds its consume-side settings (``worker.celery_app``), so both sides share
one broker configuration: late acks + reject on worker loss (a crashed worker's job is redelivered, not
lost), prefetch 1 (a GPU worker never hoards jobs) and the visibility timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from celery import Celery

from common import telemetry
from common.settings import Settings

# kombu's Redis transport keeps one list per priority step: the queue name for priority 0 and
# "{queue}\x06\x16{priority}" for the others (kombu.transport.redis.QoS / Channel._q_for_pri).
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)


def make_celery(settings: Settings) -> Celery:
    app = Celery("diffbir", broker=settings.broker_url(), set_as_current=False)
    app.conf.update(
        task_routes={settings.task_name: {"queue": settings.queue_name}},
        task_default_queue=settings.queue_name,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,  # results live in the job record, not in Celery
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "socket_timeout": settings.redis_socket_timeout_s,
            "socket_connect_timeout": settings.redis_socket_timeout_s,
            # Used only with a sentinel:// broker URL (kombu's Sentinel transport).
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": {
                "socket_timeout": settings.redis_socket_timeout_s,
                "socket_connect_timeout": settings.redis_socket_timeout_s,
            },
        },
        broker_connection_timeout=settings.redis_socket_timeout_s,
        broker_connection_retry_on_startup=True,
        # Fail a submission quickly when Redis is down (the API answers 503) instead of blocking the request.
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
    )
    return app


def enqueue_restore(app: Celery, settings: Settings, job_id: str) -> Any:
    """Send ``diffbir.restore(job_id)``; with tracing on, as a producer span whose context rides in the
    message headers (the worker's Celery instrumentation continues it)."""
    if not telemetry.enabled():
        return app.send_task(settings.task_name, args=[job_id], queue=settings.queue_name)
    attributes = {
        "messaging.system": "celery",
        "messaging.destination.name": settings.queue_name,
        "diffbir.job_id": job_id,
    }
    with telemetry.span(f"publish {settings.task_name}", attributes, producer=True):
        headers = telemetry.carrier()
        return app.send_task(settings.task_name, args=[job_id], queue=settings.queue_name, headers=headers)


# kombu's Redis transport LPUSHes new messages and BRPOPs the other end, so the RIGHT end is the front.
# Find the just-published message (by its task id, among the newest) and move it to the front, atomically.
_MOVE_TO_FRONT = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, raw in ipairs(items) do
  if string.find(raw, ARGV[1], 1, true) then
    redis.call('LREM', KEYS[1], 1, raw)
    redis.call('RPUSH', KEYS[1], raw)
    return 1
  end
end
return 0
"""
_FRONT_SCAN = 256  # newest messages searched for the one just published


def enqueue_restore_front(app: Celery, settings: Settings, client: redis.Redis, job_id: str) -> bool:
    """Publish ``diffbir.restore(job_id)`` at the FRONT of the queue (next to be taken): a job handed back
    or lost by a worker has waited its turn already.

    Two steps, each safe on its own: the message is published the ordinary way (to the back), then moved
    to the front. A crash in between leaves it at the back, still queued; a worker that took it meanwhile
    leaves nothing to move. Returns whether it was moved. Hand-written because Celery's Redis transport has
    no "publish to the front" (its priorities would split the queue into lists other code reads).
    """
    task_id = str(enqueue_restore(app, settings, job_id).id)
    return bool(client.eval(_MOVE_TO_FRONT, 1, settings.queue_name, task_id, _FRONT_SCAN))


def queue_lists(queue_name: str) -> list[str]:
    return [queue_name] + [f"{queue_name}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS if p]


def queue_depth(client: redis.Redis, queue_name: str = "gpu") -> int:
    """Messages waiting in the broker for ``queue_name`` (not counting ones a worker has reserved)."""
    with client.pipeline(transaction=False) as pipe:
        for name in queue_lists(queue_name):
            pipe.llen(name)
        return int(sum(pipe.execute()))


async def queue_depth_async(client: Any, queue_name: str = "gpu") -> int:
    async with client.pipeline(transaction=False) as pipe:
        for name in queue_lists(queue_name):
            pipe.llen(name)
        return int(sum(await pipe.execute()))


class SharedDepthReader:
    """``queue_depth_async`` for many concurrent callers: one Redis round trip answers every caller that
    asks while it is in flight (single flight).

    A burst of uploads checks the depth at once; each check is a 4-command pipeline whose client-side cost
    is as large as a third of the rest of the submission. The answer is never older than the request: a
    caller either starts a fresh lookup or joins one that was still running when it asked. The shared
    lookup is shielded, so one caller's cancellation never fails the others. One instance per event loop.
    """

    def __init__(self, client: Any, queue_name: str = "gpu"):
        self.client = client
        self.queue_name = queue_name
        self._inflight: asyncio.Future[int] | None = None

    async def depth(self) -> int:
        inflight = self._inflight
        if inflight is None or inflight.done():
            inflight = self._inflight = asyncio.ensure_future(queue_depth_async(self.client, self.queue_name))
        return await asyncio.shield(inflight)
