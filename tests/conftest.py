"""Shared fixtures: an isolated redis-server and a moto S3 server, one of each per test session.

Both listen on free loopback ports and keep nothing on disk, so tests never touch a developer's Redis or
AWS. The worker's end-to-end tests reuse them.
"""

from __future__ import annotations

import os

# Before anything loads torch: MKL picks its kernels by the CPU it finds (AVX-512, AVX2, ...), and their
# last bits differ. The reference-parity runs amplify those bits (an ancestral second-order EDM step from
# sigma 1e4 turned them into 8.5x its tolerance on an AVX-512 machine), so the suite pins MKL's conditional
# numerical reproducibility to its portable code path: the same numbers on every x86-64 CI machine.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

if TYPE_CHECKING:
    from tests.sentinel import SentinelCluster


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway redis-server process (no persistence) that tests may stop and restart on the same port."""

    def __init__(self, workdir: Path):
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is required for the tests (apt-get install redis-server)")
        self.exe = exe
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        args = [
            self.exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the session Redis, emptied before each test (restarted first if a test stopped it)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def sentinel_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A master, a replica and a sentinel of this test's own (tests/sentinel.py)."""
    from tests.sentinel import SentinelCluster  # it imports free_port from here

    c = SentinelCluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of an in-process moto S3 server (credentials: any non-empty strings)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings values (as DIFFBIR_* env vars and returned) pointing the S3 blob store at moto."""
    values = {
        "DIFFBIR_STORAGE_BACKEND": "s3",
        "DIFFBIR_S3_ENDPOINT_URL": s3_server,
        "DIFFBIR_S3_BUCKET": "diffbir-test",
        "DIFFBIR_S3_REGION": "us-east-1",
        "DIFFBIR_S3_ACCESS_KEY_ID": "testing",
        "DIFFBIR_S3_SECRET_ACCESS_KEY": "testing",
        "DIFFBIR_S3_CREATE_BUCKET": "true",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values
