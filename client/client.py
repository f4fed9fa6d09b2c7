"""HTTP clients for the restoration API: ``RestoreClient`` (sync) and ``AsyncRestoreClient`` (asyncio).

Both speak only the public HTTP contract (docs/api.md) through httpx, so they work against any deployment.
The request building and response parsing are shared; only the I/O and the sleeping differ.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from client.errors import APIError, JobFailedError, RestoreClientError, WaitTimeoutError
from client.jobs import Job, PollSchedule

ImageInput = str | os.PathLike[str] | bytes | IO[bytes]
ProgressCallback = Callable[[Job], None]

DEFAULT_URL = "http://localhost:8000"
# Server-side transient states a poller should ride out rather than give up on (deploys, Redis failover).
_TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
# ...but not forever: this many failed polls in a row means the server is really gone.
MAX_CONSECUTIVE_POLL_ERRORS = 20


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_submit_request(
    image: ImageInput, filename: str | None, params: dict[str, Any], idempotency_key: str | None
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Multipart ``files``, form ``data`` and extra headers for ``POST /v1/restore``.

    ``None`` values are left out so the server's defaults apply; the server validates everything else.
    """
    if isinstance(image, bytes):
        content, name = image, filename or "image"
    elif isinstance(image, str | os.PathLike):
        path = Path(image)
        content, name = path.read_bytes(), filename or path.name
    else:
        content, name = image.read(), filename or Path(getattr(image, "name", "image")).name
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    data = {key: _form_value(value) for key, value in params.items() if value is not None}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return {"image": (name, content, content_type)}, data, headers


def parse_job(response: httpx.Response) -> Job:
    """A job document from a success response, or the API's problem detail as an ``APIError``."""
    if response.is_error:
        raise APIError.from_response(response)
    try:
        return Job.from_dict(response.json())
    except ValueError as exc:
        raise RestoreClientError(f"unexpected answer from {response.request.url}: {exc}") from exc


def check_result(response: httpx.Response) -> bytes:
    if response.is_error:
        raise APIError.from_response(response)
    return response.content


def finished_or_raise(job: Job, raise_on_failure: bool) -> Job:
    if raise_on_failure and job.done and not job.succeeded:
        raise JobFailedError(job)
    return job


def _job_path(job_id: str, suffix: str = "") -> str:
    """The job's URL path with the id percent-encoded: an id such as ``../../metrics`` (from user input)
    must address no job at all rather than another route, with the API key attached."""
    return f"/v1/jobs/{quote(str(job_id), safe='')}{suffix}"


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, APIError):
        return exc.status in _TRANSIENT_STATUSES
    return isinstance(exc, httpx.TransportError)


class _Base:
    def __init__(self, base_url: str, api_key: str | None, timeout: float, user_agent: str):
        self.base_url = base_url.rstrip("/")
        headers = {"Accept": "application/json, application/problem+json", "User-Agent": user_agent}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # Redirects are followed so that /result can hand out a presigned object-store URL; httpx drops the
        # Authorization header when the redirect leaves the API's origin, so the key never reaches the store.
        self._client_kwargs: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": headers,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            "follow_redirects": True,
        }


class RestoreClient(_Base):
    """Blocking client. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(base_url, api_key, timeout, "diffbir-restore-client")
        self._http = httpx.Client(transport=transport, **self._client_kwargs)
        self._sleep, self._clock = sleep, clock

    def __enter__(self) -> RestoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(
        self,
        image: ImageInput,
        *,
        filename: str | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> Job:
        """Upload an image with restoration parameters (fidelity, task, upscale, steps, sampler, seed...)."""
        files, data, headers = build_submit_request(image, filename, params, idempotency_key)
        return parse_job(self._http.post("/v1/restore", files=files, data=data, headers=headers))

    def get(self, job_id: str) -> Job:
        return parse_job(self._http.get(_job_path(job_id)))

    def cancel(self, job_id: str) -> Job:
        response = self._http.delete(_job_path(job_id))
        if response.status_code == 204:
            return self.get(job_id)
        return parse_job(response)

    def result(self, job_id: str) -> bytes:
        """The restored image's bytes (following a redirect to the object store if the API sends one)."""
        return check_result(self._http.get(_job_path(job_id, "/result")))

    def wait(
        self,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        schedule: PollSchedule | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll until the job is done; ``on_progress`` sees every snapshot. Transient errors are retried."""
        schedule = schedule or PollSchedule()
        deadline = None if timeout is None else self._clock() + timeout
        job: Job | None = None
        failures = 0
        while True:
            try:
                job = self.get(job_id)
            except (APIError, httpx.TransportError) as exc:
                failures += 1
                if job is None or not _is_transient(exc) or failures >= MAX_CONSECUTIVE_POLL_ERRORS:
                    raise
            else:
                failures = 0
                if on_progress is not None:
                    on_progress(job)
                if job.done:
                    return finished_or_raise(job, raise_on_failure)
            delay = schedule.next_delay(job)
            if deadline is not None:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise WaitTimeoutError(job, timeout or 0.0)
                delay = min(delay, remaining)
            self._sleep(delay)

    def restore(
        self,
        image: ImageInput,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> bytes:
        """Submit, wait and download in one call; raises ``JobFailedError`` if the job does not succeed."""
        job = self.submit(image, idempotency_key=idempotency_key, **params)
        if on_progress is not None:
            on_progress(job)
        self.wait(job.id, on_progress=on_progress, timeout=timeout)
        return self.result(job.id)


class AsyncRestoreClient(_Base):
    """asyncio client with the same methods as ``RestoreClient`` (all coroutines)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(base_url, api_key, timeout, "diffbir-restore-client")
        self._http = httpx.AsyncClient(transport=transport, **self._client_kwargs)

    async def __aenter__(self) -> AsyncRestoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(
        self,
        image: ImageInput,
        *,
        filename: str | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> Job:
        files, data, headers = build_submit_request(image, filename, params, idempotency_key)
        return parse_job(await self._http.post("/v1/restore", files=files, data=data, headers=headers))

    async def get(self, job_id: str) -> Job:
        return parse_job(await self._http.get(_job_path(job_id)))

    async def cancel(self, job_id: str) -> Job:
        response = await self._http.delete(_job_path(job_id))
        if response.status_code == 204:
            return await self.get(job_id)
        return parse_job(response)

    async def result(self, job_id: str) -> bytes:
        return check_result(await self._http.get(_job_path(job_id, "/result")))

    async def wait(
        self,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        schedule: PollSchedule | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        schedule = schedule or PollSchedule()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        job: Job | None = None
        failures = 0
        while True:
            try:
                job = await self.get(job_id)
            except (APIError, httpx.TransportError) as exc:
                failures += 1
                if job is None or not _is_transient(exc) or failures >= MAX_CONSECUTIVE_POLL_ERRORS:
                    raise
            else:
                failures = 0
                if on_progress is not None:
                    on_progress(job)
                if job.done:
                    return finished_or_raise(job, raise_on_failure)
            delay = schedule.next_delay(job)
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeoutError(job, timeout or 0.0)
                delay = min(delay, remaining)
            await asyncio.sleep(delay)

    async def restore(
        self,
        image: ImageInput,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> bytes:
        job = await self.submit(image, idempotency_key=idempotency_key, **params)
        if on_progress is not None:
            on_progress(job)
        await self.wait(job.id, on_progress=on_progress, timeout=timeout)
        return await self.result(job.id)
