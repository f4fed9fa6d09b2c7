"""Worker unit-test fixtures: a real Redis job store + blob store and a scripted pipeline double.

The double stands in for ``DiffBIRPipeline`` only where the real one cannot be driven into a state on CPU
(out-of-memory, a stall past a time limit); it follows the same face (progress per step, cancel check per
step, ``RestoreResult``-shaped return). The end-to-end suite runs the real tiny pipeline.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from common.blobstore import RedisBlobStore, input_key
from common.job_store import JobStore
from common.jobs import InputInfo, Job, new_job_id, utcnow
from common.params import RestoreParams
from common.workers import WorkerRegistry
from model.errors import CanceledError
from worker.config import WorkerSettings
from worker.context import WorkerContext
from worker.metrics import WorkerMetrics


@dataclass
class ScriptedPipeline:
    """Nearest-neighbour upscale run as ``steps`` sampler steps; can raise or stall on request."""

    step_sleep_s: float = 0.0
    raise_at_step: int | None = None
    error: BaseException | None = None
    on_step: Callable[[int], None] | None = None
    calls: int = 0
    steps_run: int = 0
    seen_options: list[Any] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)

    def restore(
        self, image: np.ndarray, options: Any, progress: Any = None, should_cancel: Any = None
    ) -> Any:
        self.calls += 1
        self.seen_options.append(options)
        t0 = time.perf_counter()
        if progress:
            progress("stage1", 0, 1)
            progress("stage1", 1, 1)
        for step in range(options.steps):
            if self.on_step:
                self.on_step(step)
            if self.raise_at_step == step and self.error is not None:
                raise self.error
            if should_cancel and should_cancel():
                raise CanceledError("canceled")
            if self.step_sleep_s:
                time.sleep(self.step_sleep_s)
            self.steps_run += 1
            if progress:
                progress("sampler", step + 1, options.steps)
        factor = int(options.upscale)
        out = image.repeat(factor, axis=0).repeat(factor, axis=1)
        sampler_s = time.perf_counter() - t0
        return SimpleNamespace(
            image=out,
            timings={"stage1": 0.001, "sampler": sampler_s, "vae_decode": 0.001, "total": sampler_s},
            peak_memory_bytes=None,
            seed=options.seed or 0,
            sampler_steps=options.steps,
        )

    def restore_batch(
        self, images: list[np.ndarray], options_list: list[Any], progresses: list[Any], cancels: list[Any]
    ) -> list[Any]:
        self.batches.append(len(images))
        out: list[Any] = []
        for image, options, progress, cancel in zip(images, options_list, progresses, cancels, strict=True):
            try:
                out.append(self.restore(image, options, progress, cancel))
            except Exception as exc:  # per-item outcome, like DiffBIRPipeline.restore_batch
                out.append(exc)
        return out


class Receiver:
    """A tiny HTTP server recording requests; answers the queued status codes, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(({k: v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?x=1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FlakyBlobs:
    """Wraps a blob store; the first ``failures`` calls of ``put`` raise a connection error."""

    def __init__(self, inner: object, failures: int) -> None:
        self.inner, self.failures, self.put_calls = inner, failures, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.put_calls += 1
        if self.put_calls <= self.failures:
            raise redis.ConnectionError("connection reset by peer")
        self.inner.put(key, data, content_type)  # type: ignore[attr-defined]


def png_bytes(width: int = 16, height: int = 12, color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def worker_settings(redis_url: str, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "worker_preset": "tiny",
        "worker_device": "cpu",
        "worker_precision": "fp32",
        "worker_metrics_port": 0,
        "worker_transient_backoff_s": 0.01,
        "worker_progress_interval_s": 0.05,
        "webhook_backoff_s": 0.01,
        "webhook_max_retries": 1,
    }
    values.update(overrides)
    return WorkerSettings(**values)


class Harness:
    """Builds jobs the way the API does (record + input blob) and a context around a pipeline."""

    def __init__(self, client: redis.Redis, redis_url: str) -> None:
        self.client = client
        self.redis_url = redis_url
        self.pipeline = ScriptedPipeline()
        self.exits: list[int] = []
        self.ctx = self.make_ctx()

    def make_ctx(self, **overrides: Any) -> WorkerContext:
        settings = worker_settings(self.redis_url, **overrides)
        return WorkerContext(
            settings=settings,
            store=JobStore(self.client, settings),
            blobs=RedisBlobStore(self.client, settings.job_ttl_seconds),
            workers=WorkerRegistry(self.client),
            pipeline=self.pipeline,
            options_factory=SimpleNamespace,
            metrics=WorkerMetrics(),
            exit_process=self.exits.append,
        )

    def submit(self, data: bytes | None = None, **params: Any) -> Job:
        params.setdefault("steps", 5)
        params.setdefault("upscale", 2)
        job = Job(
            id=new_job_id(),
            params=RestoreParams(**params),
            input=InputInfo(width=16, height=12, format="png"),
            created_at=utcnow(),
        )
        self.ctx.store.create(job)
        self.ctx.blobs.put(input_key(job.id), png_bytes() if data is None else data, "image/png")
        return job


def sample(harness: Harness, name: str, **labels: str) -> float:
    """A metric sample of the harness's worker, through prometheus_client's public registry API."""
    return harness.ctx.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def harness(redis_client: redis.Redis, redis_url: str) -> Iterator[Harness]:
    h = Harness(redis_client, redis_url)
    yield h
