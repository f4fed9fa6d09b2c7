"""Typed client errors: one class per way a restoration can go wrong, so callers branch on type, not text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from client.jobs import Job


class RestoreClientError(Exception):
    """Base class of every error this package raises."""


class APIError(RestoreClientError):
    """The API answered with an error status; fields come from its ``application/problem+json`` body."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.problem = problem or {}
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """429 and 5xx are worth retrying later; other 4xx mean the request itself is wrong."""
        return self.status == 429 or self.status >= 500

    @classmethod
    def from_response(cls, response: httpx.Response) -> APIError:
        problem: dict[str, Any] = {}
        try:
            body = response.json()
            if isinstance(body, dict):
                problem = body
        except ValueError:
            pass
        title = str(problem.get("title") or response.reason_phrase or "HTTP error")
        detail = str(problem.get("detail") or title or response.text[:200])
        code = str(problem.get("code") or f"http_{response.status_code}")
        return cls(response.status_code, code, title, detail, problem, _retry_after(response))


class JobFailedError(RestoreClientError):
    """The job reached ``failed`` or ``canceled``; ``job.error`` says why (code + message)."""

    def __init__(self, job: Job):
        error = job.error or {}
        code = error.get("code", job.status)
        message = error.get("message", "")
        super().__init__(f"job {job.id} {job.status}: {code}: {message}".rstrip(": "))
        self.job = job
        self.code = code
        self.message = message


class WaitTimeoutError(RestoreClientError):
    """The job did not finish within the caller's timeout; it keeps running on the server."""

    def __init__(self, job: Job, timeout: float):
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")
        self.job = job
        self.timeout = timeout


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: our API never sends it, so treat it as absent.
