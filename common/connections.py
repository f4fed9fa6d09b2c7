"""Redis clients built from settings: the same timeouts for the sync (worker, API threads) and async sides."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis

from common.settings import Settings


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "health_check_interval": 30,
        "retry_on_timeout": False,
    }


def connect(settings: Settings) -> redis.Redis:
    """Sync client (worker, API thread pool); bytes responses because blobs share the connection."""
    return redis.Redis.from_url(settings.redis_url, **_client_kwargs(settings))


def connect_async(settings: Settings) -> aioredis.Redis:
    """Async client for the API's hot read path."""
    return aioredis.Redis.from_url(settings.redis_url, **_client_kwargs(settings))


def same_database(a: Any, b: Any) -> bool:
    """Whether two clients or pipelines (sync or async) talk to the same Redis server and database, so writes
    queued on one's transaction land where the other reads."""
    return _address(a) == _address(b)


def _address(client: Any) -> tuple[Any, ...]:
    kwargs = client.connection_pool.connection_kwargs
    return (kwargs.get("host"), kwargs.get("port"), kwargs.get("path"), kwargs.get("db", 0))
