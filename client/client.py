"""HTTP clients for the restoration API: ``RestoreClient`` (sync) and ``AsyncRestoreClient`` (asyncio).

Both speak only the public HTTP contract (docs/api.md) through httpx, so they work against any deployment.
The request building and response parsing are shared; only the I/O and the sleeping differ. Every call is
retried on 429/502/503/504 and connection errors (``client.retries``, honouring ``Retry-After``); a submit
always carries an ``Idempotency-Key`` (generated when the caller gives none), so its retries never create a
second job. ``wait`` follows the job's event stream (``client.events``) and falls back to polling.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx

from client.errors import APIError, JobFailedError, RestoreClientError, WaitTimeoutError
from client.events import afollow, follow
from client.jobs import Job, JobPage, PollSchedule
from client.retries import RetryPolicy, is_retryable

ImageInput = str | os.PathLike[str] | bytes | IO[bytes]
T = TypeVar("T")
ProgressCallback = Callable[[Job], None]

DEFAULT_URL = "http://localhost:8000"
# A poller rides out transient errors (client.retries.is_retryable: deploys, Redis failover), but not
# forever: this many failed polls in a row means the server is really gone.
MAX_CONSECUTIVE_POLL_ERRORS = 20


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):  # webhook_events_filter: a form sends "start,completed"
        return ",".join(str(v) for v in value)
    return str(value)


_URL_PREFIXES = ("https://", "http://", "data:")


def is_image_url(image: ImageInput) -> bool:
    """An http(s) or data: URL the server fetches or decodes itself (sent as JSON, not uploaded)."""
    return isinstance(image, str) and image.startswith(_URL_PREFIXES)


def build_submit_request(
    image: ImageInput, filename: str | None, params: dict[str, Any], idempotency_key: str | None
) -> dict[str, Any]:
    """Keyword arguments of ``POST /v1/restore``: a multipart upload, or a JSON body for an image URL.

    ``None`` values are left out so the server's defaults apply; the server validates everything else. The
    Idempotency-Key is generated when not given, so retrying the request is always safe.
    """
    headers = {"Idempotency-Key": idempotency_key or f"rc-{uuid.uuid4()}"}
    if is_image_url(image):
        body = {"image": image, **{key: value for key, value in params.items() if value is not None}}
        return {"json": body, "headers": headers}
    if isinstance(image, bytes):
        content, name = image, filename or "image"
    elif isinstance(image, str | os.PathLike):
        path = Path(image)
        content, name = path.read_bytes(), filename or path.name
    else:
        content, name = image.read(), filename or Path(getattr(image, "name", "image")).name
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    data = {key: _form_value(value) for key, value in params.items() if value is not None}
    return {"files": {"image": (name, content, content_type)}, "data": data, "headers": headers}


def parse_job(response: httpx.Response) -> Job:
    """A job document from a success response, or the API's problem detail as an ``APIError``."""
    if response.is_error:
        raise APIError.from_response(response)
    try:
        return Job.from_dict(response.json())
    except ValueError as exc:
        raise RestoreClientError(f"unexpected answer from {response.request.url}: {exc}") from exc


def parse_page(response: httpx.Response) -> JobPage:
    if response.is_error:
        raise APIError.from_response(response)
    try:
        return JobPage.from_dict(response.json())
    except ValueError as exc:
        raise RestoreClientError(f"unexpected answer from {response.request.url}: {exc}") from exc


def list_params(status: str | None, limit: int | None, cursor: str | None) -> dict[str, Any]:
    params = {"status": status, "limit": limit, "cursor": cursor}
    return {key: value for key, value in params.items() if value is not None}


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
        retries: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(base_url, api_key, timeout, "diffbir-restore-client")
        self._http = httpx.Client(transport=transport, **self._client_kwargs)
        self._sleep, self._clock = sleep, clock
        self.retries = retries or RetryPolicy()

    def __enter__(self) -> RestoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, send: Callable[[], T]) -> T:
        return self.retries.call(send, self._sleep)

    def submit(
        self,
        image: ImageInput,
        *,
        filename: str | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> Job:
        """Submit an image (a path, bytes, a file, or an ``https://``/``data:`` URL the server fetches) with
        restoration parameters (fidelity, task, upscale, steps, sampler, seed...)."""
        request = build_submit_request(image, filename, params, idempotency_key)
        return self._call(lambda: parse_job(self._http.post("/v1/restore", **request)))

    def get(self, job_id: str) -> Job:
        return self._call(lambda: parse_job(self._http.get(_job_path(job_id))))

    def list_jobs(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobPage:
        """One page of your jobs, newest first; pass ``page.next_cursor`` as ``cursor`` for the next."""
        params = list_params(status, limit, cursor)
        return self._call(lambda: parse_page(self._http.get("/v1/jobs", params=params)))

    def iter_jobs(self, *, status: str | None = None, page_size: int = 50) -> Iterator[Job]:
        """Every job of yours (optionally with one status), newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(status=status, limit=page_size, cursor=cursor)
            yield from page.jobs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> Job:
        def send() -> Job:
            response = self._http.delete(_job_path(job_id))
            if response.status_code == 204:
                return self.get(job_id)
            return parse_job(response)

        return self._call(send)

    def result(self, job_id: str) -> bytes:
        """The restored image's bytes (following a redirect to the object store if the API sends one)."""
        return self._call(lambda: check_result(self._http.get(_job_path(job_id, "/result"))))

    def wait(
        self,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        schedule: PollSchedule | None = None,
        raise_on_failure: bool = True,
        events: bool = True,
    ) -> Job:
        """Until the job is done: follow its event stream (``events``), else poll; ``on_progress`` sees every
        snapshot. Transient errors are retried."""
        deadline = None if timeout is None else self._clock() + timeout
        if events:

            def remaining() -> float | None:
                return None if deadline is None else deadline - self._clock()

            done = follow(self._http, _job_path(job_id), on_progress or _ignore, remaining, timeout)
            if done is not None:
                return finished_or_raise(done, raise_on_failure)
        schedule = schedule or PollSchedule()
        job: Job | None = None
        failures = 0
        while True:
            try:
                job = parse_job(self._http.get(_job_path(job_id)))
            except (APIError, httpx.TransportError) as exc:
                failures += 1
                if job is None or not is_retryable(exc) or failures >= MAX_CONSECUTIVE_POLL_ERRORS:
                    raise
            else:
                failures = 0
                if on_progress is not None:
                    on_progress(job)
                if job.done:
                    return finished_or_raise(job, raise_on_failure)
            delay = schedule.next_delay(job)
            if deadline is not None:
                remaining_s = deadline - self._clock()
                if remaining_s <= 0:
                    raise WaitTimeoutError(job, timeout or 0.0)
                delay = min(delay, remaining_s)
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
    """asyncio client with the same methods as ``RestoreClient`` (all coroutines; ``iter_jobs`` is an async
    iterator)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(base_url, api_key, timeout, "diffbir-restore-client")
        self._http = httpx.AsyncClient(transport=transport, **self._client_kwargs)
        self.retries = retries or RetryPolicy()

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
        request = build_submit_request(image, filename, params, idempotency_key)

        async def send() -> Job:
            return parse_job(await self._http.post("/v1/restore", **request))

        return await self.retries.acall(send)

    async def get(self, job_id: str) -> Job:
        async def send() -> Job:
            return parse_job(await self._http.get(_job_path(job_id)))

        return await self.retries.acall(send)

    async def list_jobs(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobPage:
        params = list_params(status, limit, cursor)

        async def send() -> JobPage:
            return parse_page(await self._http.get("/v1/jobs", params=params))

        return await self.retries.acall(send)

    async def iter_jobs(self, *, status: str | None = None, page_size: int = 50) -> AsyncIterator[Job]:
        cursor: str | None = None
        while True:
            page = await self.list_jobs(status=status, limit=page_size, cursor=cursor)
            for job in page.jobs:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        async def send() -> Job:
            response = await self._http.delete(_job_path(job_id))
            if response.status_code == 204:
                return await self.get(job_id)
            return parse_job(response)

        return await self.retries.acall(send)

    async def result(self, job_id: str) -> bytes:
        async def send() -> bytes:
            return check_result(await self._http.get(_job_path(job_id, "/result")))

        return await self.retries.acall(send)

    async def wait(
        self,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        schedule: PollSchedule | None = None,
        raise_on_failure: bool = True,
        events: bool = True,
    ) -> Job:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if events:

            def remaining() -> float | None:
                return None if deadline is None else deadline - loop.time()

            done = await afollow(self._http, _job_path(job_id), on_progress or _ignore, remaining, timeout)
            if done is not None:
                return finished_or_raise(done, raise_on_failure)
        schedule = schedule or PollSchedule()
        job: Job | None = None
        failures = 0
        while True:
            try:
                job = parse_job(await self._http.get(_job_path(job_id)))
            except (APIError, httpx.TransportError) as exc:
                failures += 1
                if job is None or not is_retryable(exc) or failures >= MAX_CONSECUTIVE_POLL_ERRORS:
                    raise
            else:
                failures = 0
                if on_progress is not None:
                    on_progress(job)
                if job.done:
                    return finished_or_raise(job, raise_on_failure)
            delay = schedule.next_delay(job)
            if deadline is not None:
                remaining_s = deadline - loop.time()
                if remaining_s <= 0:
                    raise WaitTimeoutError(job, timeout or 0.0)
                delay = min(delay, remaining_s)
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


def _ignore(job: Job) -> None:
    """The progress callback of a caller that did not pass one."""
