"""Redis clients built from settings: the same timeouts for the sync (worker, API threads) and async sides,
directly to ``redis_url`` or, with ``redis_sentinels`` set, to whichever server the sentinels name master
(redis-py's Sentinel support: a connection error makes the client ask the sentinels again, so after a
failover the next command goes to the new master)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel

from common.settings import Settings


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "health_check_interval": 30,
        "retry_on_timeout": False,
    }


def _master_kwargs(settings: Settings) -> dict[str, Any]:
    """Database and credentials of the master, from ``redis_url`` (its host and port are not used)."""
    parts = urlsplit(settings.redis_url)
    return {
        "db": int(parts.path.lstrip("/") or 0),
        "username": parts.username,
        "password": parts.password,
        **_client_kwargs(settings),
    }


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
    }


def connect(settings: Settings) -> redis.Redis:
    """Sync client (worker, API thread pool); bytes responses because blobs share the connection."""
    if settings.redis_sentinels:
        sentinel = redis.sentinel.Sentinel(
            settings.sentinel_addresses(), sentinel_kwargs=_sentinel_kwargs(settings)
        )
        return sentinel.master_for(settings.redis_sentinel_master, **_master_kwargs(settings))
    return redis.Redis.from_url(settings.redis_url, **_client_kwargs(settings))


def connect_async(settings: Settings) -> aioredis.Redis:
    """Async client for the API's hot read path."""
    if settings.redis_sentinels:
        sentinels = settings.sentinel_addresses()
        sentinel = aiosentinel.Sentinel(sentinels, sentinel_kwargs=_sentinel_kwargs(settings))
        return sentinel.master_for(settings.redis_sentinel_master, **_master_kwargs(settings))
    return aioredis.Redis.from_url(settings.redis_url, **_client_kwargs(settings))


def same_database(a: Any, b: Any) -> bool:
    """Whether two clients or pipelines (sync or async) talk to the same Redis server and database, so writes
    queued on one's transaction land where the other reads."""
    return _address(a) == _address(b)


def _address(client: Any) -> tuple[Any, ...]:
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    service = getattr(pool, "service_name", None)  # Sentinel: the master's name stands for its address
    return (service, kwargs.get("host"), kwargs.get("port"), kwargs.get("path"), kwargs.get("db", 0))
