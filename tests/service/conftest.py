"""API test fixtures: a TestClient factory over a fresh app bound to the session Redis (and moto for S3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from common.job_store import JobStore
from common.settings import Settings
from service.app import create_app

ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(redis_url: str) -> Iterator[ClientFactory]:
    clients: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        settings = Settings(redis_url=redis_url, **overrides)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()  # runs the lifespan
        client.app_settings = settings  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


@pytest.fixture
def store(redis_client: redis.Redis, redis_url: str) -> JobStore:
    """The worker's view of the same Redis, to drive jobs through their lifecycle."""
    return JobStore(redis_client, Settings(redis_url=redis_url))
