"""Polite retries for the client's calls (tenacity): 429, 502/503/504 and connection errors are retried,
waiting what the server's ``Retry-After`` asks for or else an exponential backoff with jitter.

Submissions are retried too because the client always sends an ``Idempotency-Key`` with them: a retry of a
request whose answer was lost returns the job the first one created instead of making a second.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from client.errors import APIError

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 502, 503, 504})


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, APIError):
        return exc.status in RETRY_STATUSES
    return isinstance(exc, httpx.TransportError)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. ``RetryPolicy(attempts=1)`` turns retries off."""

    attempts: int = 5
    initial_s: float = 0.5  # first backoff without a Retry-After; doubles, plus up to ``jitter_s``
    max_backoff_s: float = 30.0
    jitter_s: float = 0.5
    max_retry_after_s: float = 120.0  # a server asking for longer than this is not waited for

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def wait(self, state: RetryCallState) -> float:
        """The server's Retry-After when it sent one, else exponential backoff with jitter."""
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, APIError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after_s)
        backoff = wait_exponential_jitter(
            multiplier=self.initial_s, max=self.max_backoff_s, jitter=self.jitter_s
        )
        return float(backoff(state))

    def _stop(self, state: RetryCallState) -> bool:
        if stop_after_attempt(self.attempts)(state):
            return True
        exc = state.outcome.exception() if state.outcome is not None else None
        # Waiting longer than we would ever wait is pointless: give the error back now.
        return isinstance(exc, APIError) and (exc.retry_after or 0) > self.max_retry_after_s

    def _kwargs(self) -> dict[str, Any]:
        return {
            "retry": retry_if_exception(is_retryable),
            "stop": self._stop,
            "wait": self.wait,
            "reraise": True,
        }

    def call(self, fn: Callable[[], T], sleep: Callable[[float], None]) -> T:
        return Retrying(sleep=sleep, **self._kwargs())(fn)

    async def acall(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await AsyncRetrying(**self._kwargs())(fn)
