"""What went wrong and what to do about it: one reason code per failure, the message a client may read, and
retries (exponential backoff, bounded) for the transient storage errors worth retrying."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from celery.exceptions import SoftTimeLimitExceeded

from common.errors import UnprocessableError, UnsupportedMediaTypeError
from common.jobs import ErrorCode
from model.errors import CanceledError, InvalidInputError, OutOfMemoryError
from worker.job_trace import traced_call

if TYPE_CHECKING:
    from worker.context import WorkerContext

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Connection-level failures of Redis or S3 that are worth retrying (not bad data, not bugs)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | ConnectionError | TimeoutError):
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # pragma: no cover - botocore is a core dependency
        return False
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def classify(exc: BaseException) -> ErrorCode:
    """One reason code per failure; anything unexplained is ``internal`` (and logged with a traceback)."""
    if isinstance(exc, CanceledError):
        return ErrorCode.canceled
    if isinstance(exc, SoftTimeLimitExceeded):
        return ErrorCode.timeout
    if isinstance(exc, InvalidInputError | UnprocessableError | UnsupportedMediaTypeError):
        return ErrorCode.bad_input
    if isinstance(exc, OutOfMemoryError):
        return ErrorCode.out_of_memory
    return ErrorCode.internal


def public_message(code: ErrorCode, exc: BaseException) -> str:
    """The job's ``error.message``: what the client can act on, never internals (those stay in the log)."""
    if code is ErrorCode.out_of_memory:
        return "the GPU ran out of memory; retry with a smaller image or upscale"
    if code is ErrorCode.internal:
        return f"internal error ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


@traced_call
def with_retries(
    ctx: WorkerContext, fn: Callable[..., T], *args: Any, what: str = "", until: float | None = None
) -> T:
    """Call ``fn`` retrying transient connection errors with exponential backoff (bounded).

    With ``until`` (a ``time.monotonic()`` deadline) it keeps retrying until then however many attempts
    that takes (a finished job riding out a storage outage), with the backoff capped at 5 s.
    """
    retries = ctx.settings.worker_transient_retries
    delay = ctx.settings.worker_transient_backoff_s
    attempt = 0
    while True:
        try:
            return fn(*args)
        except Exception as exc:
            out_of_time = until is None or time.monotonic() + delay > until
            if not is_transient(exc) or (attempt >= retries and out_of_time):
                raise
            log.warning(
                "%s failed (%s: %s); retry %d/%d in %.2fs",
                what or fn.__name__,
                type(exc).__name__,
                exc,
                attempt + 1,
                retries,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0 if until is None else 5.0)
            attempt += 1
