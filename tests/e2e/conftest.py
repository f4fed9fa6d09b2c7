"""End-to-end fixtures: a REAL worker process (``python -m worker``, tiny preset, CPU) and a REAL uvicorn API
process on free ports, against an isolated redis-server, for each storage backend (Redis blobs, moto S3).

One stack (Redis + worker + API) is shared by every test of a backend: model loading dominates start-up, so
tests leave the stack as they found it (worker alive, queue drained). Time limits and the worker lease are
shortened so that a killed worker's job is redelivered within seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
API_KEYS = ("key-alice", "key-bob")
WEBHOOK_SECRET = "whsec_ZTJlLXdlYmhvb2stc2VjcmV0LWJ5dGVzIQ=="  # Standard Webhooks format
TERMINAL = ("succeeded", "failed", "canceled")
# Soft/hard limits and the visibility timeout: a job redelivers ~VISIBILITY_S after its worker died.
SOFT_LIMIT_S, HARD_LIMIT_S, VISIBILITY_S = 15, 18, 20
MAX_QUEUE_DEPTH = 3


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.05, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(interval_s)


class ManagedProcess:
    """A child process with its output in a log file (shown when a test fails)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, **extra_env: str) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts} {extra_env or ''} =====\n".encode())
        log.flush()
        env = {**self.env, **extra_env}
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Stack:
    """Redis + worker + API for one storage backend, and helpers to drive the API like a client would."""

    def __init__(self, backend: str, redis_server: RedisServer, env: dict[str, str], log_dir: Path) -> None:
        self.backend = backend
        self.redis_server = redis_server
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.env = env
        python = sys.executable
        worker_env = dict(env, DIFFBIR_WORKER_METRICS_PORT=str(self.metrics_port))
        self.worker = ManagedProcess(f"worker-{backend}", [python, "-m", "worker"], worker_env, log_dir)
        api_env = dict(env, DIFFBIR_PORT=str(self.api_port), DIFFBIR_HOST="127.0.0.1")
        self.api = ManagedProcess(f"api-{backend}", [python, "-m", "service"], api_env, log_dir)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=10)
        self.redis = redis.Redis.from_url(redis_server.url, socket_timeout=2)

    # --- processes ---

    def start_worker(self, timeout_s: float = 120.0, **extra_env: str) -> None:
        self.worker.start(**extra_env)
        wait_until(self.worker_ready, timeout_s, 0.2, what=f"worker ready\n{self.worker.tail()}")

    def worker_ready(self) -> bool:
        assert self.worker.alive, f"worker exited:\n{self.worker.tail()}"
        try:
            return httpx.get(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1
            ).status_code == 200 and (self.redis.zscore("diffbir:workers", self.worker_id()) is not None)
        except (httpx.HTTPError, redis.RedisError):
            return False

    def worker_id(self) -> str:
        assert self.worker.proc is not None
        return f"{socket.gethostname()}:{self.worker.proc.pid}"  # WorkerSettings' default worker_id

    def start_api(self, timeout_s: float = 60.0, **extra_env: str) -> None:
        self.api.start(**extra_env)

        def up() -> bool:
            assert self.api.alive, f"API exited:\n{self.api.tail()}"
            try:
                return self.http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s, 0.1, what="API up")

    def close(self) -> None:
        self.api.stop()
        self.worker.stop()
        self.http.close()
        self.redis.close()

    # --- client helpers ---

    def headers(self, key: str | None = API_KEYS[0], **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def submit(
        self,
        image: bytes,
        key: str | None = API_KEYS[0],
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> httpx.Response:
        fields = {k: str(v) for k, v in {"steps": 2, "upscale": 2, **fields}.items()}
        return self.http.post(
            "/v1/restore",
            files={"image": ("in.png", image, "image/png")},
            data=fields,
            headers=self.headers(key, **(headers or {})),
        )

    def submit_ok(self, image: bytes, **fields: Any) -> str:
        resp = self.submit(image, **fields)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    def job(self, job_id: str, key: str | None = API_KEYS[0]) -> dict[str, Any]:
        resp = self.http.get(f"/v1/jobs/{job_id}", headers=self.headers(key))
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def wait_status(
        self, job_id: str, statuses: tuple[str, ...] = TERMINAL, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            doc = self.job(job_id)
            return doc if doc["status"] in statuses else None

        return dict(
            wait_until(reached, timeout_s, 0.05, what=f"{job_id} in {statuses}\n{self.worker.tail(30)}")
        )

    def wait_sampling(self, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        def sampling() -> dict[str, Any] | None:
            doc = self.job(job_id)
            assert doc["status"] in ("queued", "running"), doc
            progress = doc.get("progress") or {}
            return doc if progress.get("stage") == "sampler" and progress.get("step", 0) >= 1 else None

        return dict(wait_until(sampling, timeout_s, 0.02, what=f"{job_id} sampling"))

    def wait_raw_status(self, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            doc = self.raw_job(job_id)
            return doc if doc.get("status") in TERMINAL else None

        return dict(wait_until(reached, timeout_s, 0.05, what=f"{job_id} finished\n{self.worker.tail(30)}"))

    def raw_job(self, job_id: str) -> dict[str, Any]:
        return dict(json.loads(self.redis.get(f"diffbir:job:{job_id}") or b"{}"))


def _base_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFBIR_")}
    env.update(
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        DIFFBIR_REDIS_URL=redis_url,
        DIFFBIR_API_KEYS=json.dumps(list(API_KEYS)),
        DIFFBIR_MAX_QUEUE_DEPTH=str(MAX_QUEUE_DEPTH),
        DIFFBIR_RETRY_AFTER_SECONDS="7",
        DIFFBIR_WORKER_PRESET="tiny",
        DIFFBIR_WORKER_DEVICE="cpu",
        DIFFBIR_WORKER_PRECISION="fp32",
        DIFFBIR_WORKER_HEARTBEAT_INTERVAL_S="1",
        DIFFBIR_WORKER_HEARTBEAT_MAX_AGE_S="5",
        DIFFBIR_WORKER_PROGRESS_INTERVAL_S="0.05",
        DIFFBIR_WORKER_TRANSIENT_RETRIES="6",
        DIFFBIR_WORKER_TRANSIENT_BACKOFF_S="0.25",
        DIFFBIR_TASK_SOFT_TIME_LIMIT_S=str(SOFT_LIMIT_S),
        DIFFBIR_TASK_HARD_TIME_LIMIT_S=str(HARD_LIMIT_S),
        DIFFBIR_BROKER_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
        DIFFBIR_BROKER_RESTORE_INTERVAL_S="1",
        DIFFBIR_WORKER_LEASE_TTL_S="2",  # a dead worker's job runs again within ~2 s
        DIFFBIR_WORKER_OUTBOX_GRACE_S="1",
        DIFFBIR_WEBHOOK_SECRET=WEBHOOK_SECRET,
        DIFFBIR_WEBHOOK_ALLOW_HOSTS=json.dumps(["127.0.0.1"]),
        DIFFBIR_WEBHOOK_BACKOFF_S="0.1",
        DIFFBIR_WEBHOOK_MAX_RETRIES="2",
        # Image URLs from the tests' plain-http server on loopback (production: https, public hosts only).
        DIFFBIR_IMAGE_FETCH_ALLOW_HTTP="true",
        DIFFBIR_IMAGE_FETCH_ALLOW_HOSTS=json.dumps(["127.0.0.1"]),
        # A sender killed mid-delivery is replaced within seconds (the lease), not the production 30 s.
        DIFFBIR_WEBHOOK_TIMEOUT_S="2",
        DIFFBIR_WEBHOOK_LEASE_S="4",
        DIFFBIR_WEBHOOK_POLL_INTERVAL_S="0.1",
        DIFFBIR_LOG_LEVEL="INFO",
    )
    return env


@pytest.fixture(scope="session")
def e2e_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of its own: the shared one is flushed between tests, which would wipe kombu's bindings."""
    server = RedisServer(tmp_path_factory.mktemp("e2e-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", params=["redis", "s3"])
def stack(
    request: pytest.FixtureRequest, e2e_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    backend = request.param
    env = _base_env(e2e_redis.url)
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_server")
        env.update(
            DIFFBIR_STORAGE_BACKEND="s3",
            DIFFBIR_S3_ENDPOINT_URL=endpoint,
            DIFFBIR_S3_BUCKET="diffbir-e2e",
            DIFFBIR_S3_ACCESS_KEY_ID="testing",
            DIFFBIR_S3_SECRET_ACCESS_KEY="testing",
            DIFFBIR_S3_CREATE_BUCKET="true",
        )
    log_dir = tmp_path_factory.mktemp(f"e2e-{backend}")
    redis.Redis.from_url(e2e_redis.url).flushall()
    s = Stack(backend, e2e_redis, env, log_dir)
    try:
        s.start_worker()
        s.start_api()
        yield s
    finally:
        s.close()


@pytest.fixture
def live_stack(stack: Stack) -> Iterator[Stack]:
    """The module's stack, with a live (restarted if a test killed it) worker and a reachable Redis."""
    if stack.redis_server.proc is None or stack.redis_server.proc.poll() is not None:
        stack.redis_server.start()
    if not stack.worker.alive:
        stack.start_worker()
    yield stack
    if stack.worker.alive:
        with contextlib.suppress(ProcessLookupError):
            stack.worker.signal(signal.SIGCONT)  # never leave a stopped worker behind
