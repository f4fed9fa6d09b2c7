"""Redis Sentinel support: the job store, blob store and Celery broker follow a failover (real redis-server
master + replica and a real redis-sentinel, the master killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.async_job_store import AsyncJobStore
from common.blobstore import make_blobstore
from common.connections import connect, connect_async, same_database
from common.job_store import JobStore
from common.jobs import InputInfo, Job, JobStatus, new_job_id, utcnow
from common.params import RestoreParams
from common.queue import enqueue_restore, make_celery, queue_depth
from common.settings import Settings
from tests.sentinel import MASTER_NAME, SentinelCluster


def _settings(sentinel_cluster: SentinelCluster) -> Settings:
    # The host and port of redis_url are ignored with sentinels; its database still counts.
    return Settings(
        redis_url="redis://ignored:1/0",
        redis_sentinels=sentinel_cluster.sentinels,
        redis_sentinel_master=MASTER_NAME,
        redis_socket_timeout_s=1.0,
    )


def _job() -> Job:
    return Job(
        id=new_job_id(),
        params=RestoreParams(steps=2),
        input=InputInfo(width=8, height=8, format="png"),
        created_at=utcnow(),
    )


def _retry(fn, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    """A client's first command after a failover may hit the dead master; the next asks the sentinel."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_settings_build_a_sentinel_broker_url() -> None:
    settings = Settings(
        redis_url="redis://:s3cret@ignored:1/2", redis_sentinels=["10.0.0.1:26379", "[::1]:26380"]
    )
    assert settings.broker_url() == "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://:s3cret@::1:26380/2"
    assert Settings(redis_url="redis://h:6379/0").broker_url() == "redis://h:6379/0"
    with pytest.raises(ValueError, match="host:26379"):
        Settings(redis_sentinels=["no-port"]).sentinel_addresses()


def test_job_store_blob_store_and_broker_follow_a_failover(sentinel_cluster: SentinelCluster) -> None:
    settings = _settings(sentinel_cluster)
    client = connect(settings)
    store = JobStore(client, settings)
    blobs = make_blobstore(settings, client)
    app = make_celery(settings)
    try:
        before = _job()
        store.create(before)
        blobs.put(f"inputs/{before.id}", b"input-bytes", "image/png")
        enqueue_restore(app, settings, before.id)
        # Replication is asynchronous: let the replica catch up, as a failover takes seconds anyway.
        sentinel_cluster.wait_replicated()

        new_master = sentinel_cluster.kill_master()
        assert new_master != sentinel_cluster.ports[0]

        # Everything written before the failover is on the new master, through the same clients.
        got = _retry(lambda: store.get(before.id))
        assert got is not None and got.status is JobStatus.queued
        assert blobs.get(f"inputs/{before.id}") == b"input-bytes"
        assert queue_depth(client, settings.queue_name) == 1
        # And new writes go to the new master.
        after = _job()
        store.create(after)
        assert store.claim(after.id, "w-1").job is not None
        _retry(lambda: enqueue_restore(app, settings, after.id))
        assert queue_depth(client, settings.queue_name) == 2
        assert client.connection_pool.get_master_address()[1] == new_master
    finally:
        app.close()
        client.close()


def test_async_client_follows_a_failover_and_shares_the_sync_database(
    sentinel_cluster: SentinelCluster,
) -> None:
    settings = _settings(sentinel_cluster)
    sync_client = connect(settings)
    assert same_database(sync_client, sync_client.pipeline())

    async def scenario() -> None:
        aclient = connect_async(settings)
        try:
            assert same_database(aclient, sync_client)  # a submission's blob joins the record's MULTI
            store = AsyncJobStore(aclient, settings)
            job = _job()
            await store.create(job)
            await asyncio.to_thread(sentinel_cluster.wait_replicated)
            await asyncio.to_thread(sentinel_cluster.kill_master)
            deadline = time.monotonic() + 20
            while True:
                try:
                    got = await store.get(job.id)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert got is not None and got.id == job.id
        finally:
            await aclient.aclose()

    try:
        asyncio.run(scenario())
    finally:
        sync_client.close()
