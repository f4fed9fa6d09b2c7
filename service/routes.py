"""HTTP routes: parse, call, shape the answer. The work happens in ``service.submit`` and ``common``."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from redis.exceptions import RedisError

from common.blobstore import BlobNotFoundError, result_key
from common.errors import (
    JobNotFinishedError,
    NotFoundError,
    ServerBusyError,
    ServiceUnavailableError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)
from common.jobs import Job, JobStatus, is_valid_job_id, public_document
from common.params import RestoreParams
from common.queue import queue_depth_async
from common.settings import Settings
from service import openapi_docs as docs
from service.app_state import Services
from service.auth import caller_of, same_owner
from service.image_input import read_json_submission
from service.submit import backpressure_error, submit
from service.sync_wait import can_wait, requested_wait, wait_finished
from service.uploads import read_upload

log = logging.getLogger(__name__)
# Authentication is called inline (caller_of) rather than as a FastAPI dependency: dependency resolution
# costs about as much as the rest of the status route, the API's hottest. tests/service/test_api.py checks
# that every /v1 route refuses a missing key.
api = APIRouter(prefix="/v1", tags=["jobs"])
ops = APIRouter(tags=["operations"])


def services_of(request: Request) -> Services:
    return request.app.state.services


async def load_job(services: Services, job_id: str, owner: str) -> Job:
    """The caller's job, or 404 (also for another owner's job, so ids cannot be probed)."""
    raw = await services.ajobs.get_raw(job_id) if is_valid_job_id(job_id) else None
    if raw is None:
        raise NotFoundError(f"no job {job_id!r}")
    job = Job.model_validate_json(raw)
    if not same_owner(job.owner, owner):
        raise NotFoundError(f"no job {job_id!r}")
    return job


def job_response(job: Job, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = job.model_dump_json(exclude={"owner"})
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def parse_params(fields: dict[str, Any]) -> RestoreParams:
    """Form fields (strings) or JSON members: RestoreParams decides, field by field, so a new parameter
    needs no edit here."""
    try:
        return RestoreParams.model_validate(fields)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise UnprocessableError("invalid restoration parameters", errors=errors) from exc


def base_url_of(request: Request, settings: Settings) -> str:
    """Root of the absolute URLs: the configured public URL, else the request's own (uvicorn applies the
    proxy's X-Forwarded-* headers when the proxy is trusted)."""
    return settings.public_base_url or str(request.base_url)


async def read_submission(request: Request, services: Services) -> tuple[bytes, dict[str, Any]]:
    """The image and parameter fields of a multipart upload or a JSON body (image by URL or data URI)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        submission = await read_json_submission(request, services)
        return submission.image, submission.fields
    if media_type != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            "send multipart/form-data with the image in a part named 'image', "
            "or application/json with 'image' as an https URL or a data URI"
        )
    settings = services.settings
    upload = await read_upload(request, settings.max_upload_bytes, settings.upload_timeout_s)
    return upload.image, dict(upload.fields)


@api.post("/restore", status_code=202, summary="Submit an image for restoration", **docs.SUBMIT)
async def restore(
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    services = services_of(request)
    owner = caller_of(request)
    if idempotency_key is None:
        # Refuse before reading the upload. With a key, a retry of an accepted request must still get its
        # job back when the queue is full, so submit() checks the depth after the idempotency lookup.
        depth = await services.queue_depth()
        if (too_many := backpressure_error(services, depth)) is not None:
            raise too_many
    if services.upload_slots.locked():
        services.metrics.rejected.labels("uploads_busy").inc()
        limit = services.settings.max_concurrent_uploads
        raise ServerBusyError(f"{limit} uploads are in progress on this process", retry_after_s=1)
    async with services.upload_slots:  # held until the image bytes are stored and can be dropped
        image, fields = await read_submission(request, services)
        params = parse_params(fields)
        base_url = base_url_of(request, services.settings)
        submission = await submit(services, owner, image, params, idempotency_key, base_url)
    job = submission.job
    headers = {"Location": job.urls.get if job.urls else f"/v1/jobs/{job.id}", **submission.headers}
    if submission.replayed:
        headers["Idempotent-Replayed"] = "true"
    wait_s = requested_wait(request.headers.get("prefer"), services.settings.max_sync_wait_s)
    if wait_s is None or not can_wait(services.events):
        return job_response(job, 202, headers)
    headers["Preference-Applied"] = f"wait={wait_s}"
    if job.status.terminal:  # a replayed submission whose job already finished
        return job_response(job, 201, headers)
    raw = await wait_finished(services.events, job.id, wait_s)
    if raw is None:  # expired or deleted meanwhile: what was accepted is still the best answer
        return job_response(job, 202, headers)
    latest = Job.model_validate_json(raw)
    return job_response(latest, 201 if latest.status.terminal else 202, headers)


@api.get("/jobs/{job_id}", summary="Job status and progress", **docs.GET_JOB)
async def get_job(job_id: str, request: Request) -> Response:
    # The hottest route: one Redis GET, and the stored bytes are served as they are (public_document
    # strips the owner after checking it), with no pydantic parse and re-dump.
    services = services_of(request)
    owner = caller_of(request)
    raw = await services.ajobs.get_raw(job_id) if is_valid_job_id(job_id) else None
    body = None if raw is None else public_document(raw, owner)
    if body is None:
        raise NotFoundError(f"no job {job_id!r}")
    return Response(body, media_type="application/json")


@api.get("/jobs/{job_id}/result", summary="The restored image", **docs.GET_RESULT)
async def get_result(job_id: str, request: Request) -> Response:
    services = services_of(request)
    job = await load_job(services, job_id, caller_of(request))
    if job.status is not JobStatus.succeeded or job.result is None:
        raise JobNotFinishedError(f"job {job_id} is {job.status}", job_status=str(job.status))
    key = result_key(job.id, job.params.output_format)
    # Signing is local, but boto3 may first fetch or refresh credentials (instance metadata, STS): blocking
    # network I/O that must not stall the event loop.
    url = await run_in_threadpool(services.blobs.presigned_url, key, services.settings.presign_ttl_seconds)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    try:
        data = await run_in_threadpool(services.blobs.get, key)
    except BlobNotFoundError as exc:
        raise NotFoundError(f"the result of job {job_id} has expired") from exc
    filename = f"{job.id}.{job.params.output_format}"
    return Response(
        data,
        media_type=job.result.content_type,
        headers={
            "Content-Disposition": f'inline; filename="{filename}"',
            "Cache-Control": "private, max-age=300",
        },
    )


async def _cancel(request: Request, job_id: str) -> Response:
    services = services_of(request)
    await load_job(services, job_id, caller_of(request))  # ownership first: never act on someone else's job
    job = await run_in_threadpool(services.jobs.request_cancel, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r}")
    # 200: canceled now; 202: running, the worker stops at its next step.
    return job_response(job, 200 if job.status is JobStatus.canceled else 202)


@api.post("/jobs/{job_id}/cancel", summary="Cancel a job", **docs.CANCEL)
async def cancel_job(job_id: str, request: Request) -> Response:
    return await _cancel(request, job_id)


@api.delete("/jobs/{job_id}", summary="Cancel a job (same as POST .../cancel)", **docs.DELETE)
async def delete_job(job_id: str, request: Request) -> Response:
    return await _cancel(request, job_id)


@ops.get("/healthz", summary="Liveness: the process serves requests", **docs.HEALTHZ)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops.get("/readyz", summary="Readiness: Redis answers and a worker sent a heartbeat recently", **docs.READYZ)
async def readyz(request: Request) -> Response:
    services = services_of(request)
    max_age = services.settings.worker_heartbeat_max_age_s
    await services.aredis.ping()
    latest = await services.workers.latest_beat()
    age = None if latest is None else max(0.0, time.time() - latest)
    if age is None or age > max_age:
        seen = "no worker heartbeat yet" if age is None else f"last worker heartbeat {age:.0f}s ago"
        raise ServiceUnavailableError(f"{seen} (need one within {max_age:.0f}s)", redis="ok")
    body: dict[str, Any] = {"status": "ready", "redis": "ok", "worker_heartbeat_age_s": round(age, 3)}
    return JSONResponse(body)


@ops.get("/metrics", summary="Prometheus metrics", **docs.METRICS)
async def metrics(request: Request) -> Response:
    services = services_of(request)
    gauges = services.metrics
    try:
        gauges.queue_depth.set(await queue_depth_async(services.aredis, services.settings.queue_name))
        fresh, stale = await services.workers.count(services.settings.worker_heartbeat_max_age_s)
        gauges.workers_ready.set(fresh)
        gauges.workers_stale.set(stale)
    except RedisError as exc:  # Redis down: still serve the HTTP metrics; the gauges keep their last values
        log.warning("queue depth / worker count unavailable for /metrics: %s", exc)
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
