"""Synchronous submissions: ``Prefer: wait=N`` (RFC 7240) holds the answer until the job finishes or N s pass.

The wait is a Redis pub/sub subscription to the job's ``finished`` channel (``common.job_store`` publishes
there in the same transaction that writes a terminal status), read in blocking waits of at most a second:
no polling of the job per request. The document is read once after subscribing, so a job that finished
before the subscription is not missed. How many requests one process holds open is bounded
(``max_sync_waits``); past that a submission answers 202 at once, without ``Preference-Applied``.
"""

from __future__ import annotations

import asyncio
import re

from common.jobs import Job
from common.keys import finished_channel
from service.app_state import Services

_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,9})\"?\s*(?:$|[,;])", re.IGNORECASE)
_READ_WAIT_S = 1.0  # one blocking read on the subscription; bounded so the request's deadline is honoured


def requested_wait(prefer: str | None, max_wait_s: int) -> int | None:
    """Seconds asked for by ``Prefer: wait=N`` (capped at ``max_wait_s``), or None when not asked.
    Unrecognised or malformed preferences are ignored, as RFC 7240 requires."""
    if not prefer:
        return None
    match = _WAIT.search(prefer)
    if match is None:
        return None
    return min(int(match.group(1)), max_wait_s)


def _finished(raw: bytes | None) -> bool:
    return raw is None or Job.model_validate_json(raw).status.terminal


async def wait_finished(services: Services, job_id: str, timeout_s: float) -> bytes | None:
    """The job's stored document once it is finished, or as it stands after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with services.aredis.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(finished_channel(job_id))
        raw = await services.ajobs.get_raw(job_id)
        while not _finished(raw):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            message = await pubsub.get_message(timeout=min(remaining, _READ_WAIT_S))
            if message is not None:
                raw = await services.ajobs.get_raw(job_id)
        await pubsub.unsubscribe()
    return raw
