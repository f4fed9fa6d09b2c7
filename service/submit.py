"""A submission's lifecycle on the API side: validate -> store input -> record job -> enqueue.

Runs on the event loop: the Pillow header check is a few microseconds of parsing, and the Redis writes go
through the async client (one MULTI for the input blob and the job record). Only blocking libraries go to
the thread pool: Celery's producer, boto3 (S3 blob store) and a full decode when ``submit_full_decode`` is
set. Profiled under a burst of uploads, every thread hop cost GIL hand-offs with the loop, which showed up
in the tail latency. Ordering matters: the job record exists before the message is published (the worker
must find it), and a failure after claiming an Idempotency-Key releases the claim so the client can retry
with the same key. The record's outbox entry is written in the same MULTI, so an API that dies (or a Redis
that fails) between storing and publishing leaves a job the workers' outbox sweep publishes within seconds:
its Idempotency-Key then replays a job that runs, never a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field

from fastapi.concurrency import run_in_threadpool

from common import imaging, telemetry
from common.blobstore import input_key
from common.errors import (
    IdempotencyInProgressError,
    IdempotencyKeyReusedError,
    ImageTooLargeError,
    TooManyRequestsError,
    UnprocessableError,
)
from common.faults import fault_point
from common.formats import CONTENT_TYPES
from common.idempotency import IdempotencyRecord
from common.jobs import ErrorCode, InputInfo, Job, JobUrls, new_job_id, utcnow
from common.logging_setup import bind
from common.params import RestoreParams, stage2_size
from common.webhooks import WebhookURLError, check_callback_url
from service.app_state import Services
from service.quotas import admit

log = logging.getLogger(__name__)
ABANDONED_CLAIM_S = 300.0


@dataclass(frozen=True)
class Submission:
    job: Job
    replayed: bool  # True: an earlier request with the same Idempotency-Key created this job
    headers: dict[str, str] = field(default_factory=dict)  # the key's RateLimit-* state (service.quotas)


def fingerprint(image: bytes, params: RestoreParams) -> str:
    """Identity of a request body, to tell a retry from a different request reusing an Idempotency-Key."""
    digest = hashlib.sha256(image)
    digest.update(b"\x00" + params.model_dump_json().encode())
    return digest.hexdigest()


def backpressure_error(services: Services, depth: int) -> TooManyRequestsError | None:
    """429 when the broker queue is already as deep as allowed (checked before the upload is even read)."""
    settings = services.settings
    if depth < settings.max_queue_depth:
        return None
    services.metrics.rejected.labels("queue_full").inc()
    return TooManyRequestsError(
        f"{depth} jobs are waiting (limit {settings.max_queue_depth})",
        retry_after_s=settings.retry_after_seconds,
    )


def validate(services: Services, image: bytes, params: RestoreParams) -> imaging.ImageInfo:
    settings = services.settings
    info = imaging.probe(image, settings.max_input_pixels, decode=settings.submit_full_decode)
    out_w, out_h = params.output_size(info.width, info.height)
    if out_w * out_h > settings.max_output_pixels:
        raise ImageTooLargeError(
            f"upscale {params.upscale} of {info.width}x{info.height} gives {out_w * out_h} pixels, "
            f"more than the limit of {settings.max_output_pixels}"
        )
    # The worker's own limit (model.pipeline): stage 2 runs with the short side raised, so a thin strip
    # becomes a huge image there. Its pixel limit is the larger of the two settings (worker.loading).
    s2_w, s2_h = stage2_size(out_w, out_h)
    stage2_limit = max(settings.max_input_pixels, settings.max_output_pixels)
    if s2_w * s2_h > stage2_limit:
        raise ImageTooLargeError(
            f"a {out_w}x{out_h} output is restored at {s2_w}x{s2_h} (short side raised), "
            f"more than the limit of {stage2_limit} pixels"
        )
    return info


async def check_callback(services: Services, url: str) -> None:
    """The SSRF guard on callback_url, its DNS lookup on the DNS threads with a timeout (a slow resolver
    must not stall the event loop). Past the timeout the URL is accepted on its syntax, literal IP and
    allow-list: delivery resolves and re-checks every time anyway."""
    settings = services.settings
    check = functools.partial(
        check_callback_url,
        url,
        settings.webhook_allow_hosts,
        allow_private=settings.webhook_allow_private,
        resolver=services.resolver,
    )
    try:
        try:
            async with asyncio.timeout(settings.callback_resolve_timeout_s):
                await services.off_loop_dns(check)
        except TimeoutError:
            log.info(
                "callback_url lookup took over %gs; checked at delivery", settings.callback_resolve_timeout_s
            )
            check(resolve=False)
    except WebhookURLError as exc:
        raise UnprocessableError(str(exc), errors=[{"loc": ["callback_url"], "msg": str(exc)}]) from exc


async def submit(
    services: Services,
    owner: str,
    image: bytes,
    params: RestoreParams,
    idempotency_key: str | None,
    base_url: str,
) -> Submission:
    """Validate, store and enqueue one upload (or return the job an earlier request with the same key made).

    Without an Idempotency-Key the caller has already checked the queue depth (before reading the body).
    ``base_url`` roots the job's absolute URLs."""
    with telemetry.span("validate upload", {"diffbir.upload_bytes": len(image)}):
        if services.settings.submit_full_decode:  # decoding every pixel takes milliseconds: not on the loop
            info = await run_in_threadpool(validate, services, image, params)
        else:
            info = validate(services, image, params)
    if params.callback_url:
        await check_callback(services, params.callback_url)
    job_id = new_job_id()
    job = Job(
        id=job_id,
        urls=JobUrls.under(base_url, job_id),
        params=params,
        input=InputInfo(
            width=info.width,
            height=info.height,
            format=info.format,
            bytes=info.bytes,
            conversions=info.conversions,
        ),
        created_at=utcnow(),
        owner=owner,
        traceparent=telemetry.current_traceparent(),
    )
    idempotency = services.idempotency
    if idempotency_key is not None:
        record = IdempotencyRecord(job_id=job.id, fingerprint=fingerprint(image, params))
        earlier = await idempotency.claim(owner, idempotency_key, record)
        if earlier is not None and not await _take_over_abandoned(
            services, owner, idempotency_key, earlier, record
        ):
            return await _replay(services, earlier, record)
        depth = await services.queue_depth()
        if (too_many := backpressure_error(services, depth)) is not None:
            await idempotency.release(owner, idempotency_key, job.id)
            raise too_many
    try:
        quota_headers = await admit(services.quotas, owner, job.id)  # a replay above took no quota
    except BaseException:
        if idempotency_key is not None:
            await idempotency.release(owner, idempotency_key, job.id)
        raise
    try:
        with telemetry.span("store input", {"diffbir.job_id": job.id, "diffbir.upload_bytes": len(image)}):
            await _store(services, job, image, CONTENT_TYPES[info.format])
    except BaseException:
        if idempotency_key is not None:
            await idempotency.release(owner, idempotency_key, job.id)
        with contextlib.suppress(Exception):  # best effort: the slot expires by itself otherwise
            await services.quotas.release(owner, job.id)
        raise
    fault_point("after_store")
    try:
        await services.publish(job.id)
    except asyncio.CancelledError:
        raise  # the request was cancelled after the message went out (see Services.publish): the job stands
    except BaseException:
        # The record exists but no worker will ever see it: fail it so pollers get an answer. A rare path,
        # so the status transition keeps using the sync store's WATCH/MULTI loop in the thread pool.
        await run_in_threadpool(
            services.jobs.fail, job.id, ErrorCode.internal, "the job could not be enqueued"
        )
        if idempotency_key is not None:
            await idempotency.release(owner, idempotency_key, job.id)
        raise
    fault_point("after_publish")
    services.metrics.jobs_submitted.labels(params.task).inc()
    bind(job_id=job.id)
    log.info("job accepted", extra={"job_id": job.id, "task": params.task, "outcome": "accepted"})
    return Submission(job=job, replayed=False, headers=quota_headers)


async def _store(services: Services, job: Job, image: bytes, content_type: str) -> None:
    """Store the input, then the job record (the worker must find both once the message is out)."""
    key = input_key(job.id)
    async with services.ajobs.transaction() as tx:
        # Blobs on the job store's Redis join the record's MULTI: one round trip on the async client.
        if services.blobs.queue_put(tx, key, image, content_type):
            services.index.queue_add(tx, job)  # the owner's job list (GET /v1/jobs)
            await services.ajobs.create(job, tx)
            return
    await run_in_threadpool(services.blobs.put, key, image, content_type)
    async with services.ajobs.transaction() as tx:
        services.index.queue_add(tx, job)
        await services.ajobs.create(job, tx)


async def _take_over_abandoned(
    services: Services, owner: str, key: str, earlier: IdempotencyRecord, record: IdempotencyRecord
) -> bool:
    """True when this request takes over a claim whose request died before storing its job.

    An API process killed between claiming the key and writing the job record leaves a claim that points
    at no job; without this, every retry with that key would answer 409 for the whole idempotency TTL.
    Past ``ABANDONED_CLAIM_S`` (far longer than any submission takes) an identical request replaces it.
    """
    if earlier.fingerprint != record.fingerprint or time.time() - earlier.created_at < ABANDONED_CLAIM_S:
        return False
    if await services.ajobs.get_raw(earlier.job_id) is not None:
        return False
    return await services.idempotency.replace(owner, key, earlier, record)


async def _replay(services: Services, earlier: IdempotencyRecord, current: IdempotencyRecord) -> Submission:
    if earlier.fingerprint != current.fingerprint:
        raise IdempotencyKeyReusedError("this Idempotency-Key was used with a different image or parameters")
    job = await services.ajobs.get(earlier.job_id)
    if job is None:  # the first request is still storing its input (or failed and will release the key)
        raise IdempotencyInProgressError(headers={"Retry-After": "1"})
    return Submission(job=job, replayed=True)
