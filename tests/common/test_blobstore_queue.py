from __future__ import annotations

import json

import pytest
import redis
import redis.asyncio as aioredis

from common.blobstore import BlobNotFoundError, BlobStore, RedisBlobStore, S3BlobStore, make_blobstore
from common.queue import enqueue_restore, make_celery, queue_depth
from common.settings import Settings


def exercise(store: BlobStore) -> None:
    store.put("inputs/j_x", b"\x00bytes", "image/png")
    assert store.get("inputs/j_x") == b"\x00bytes"
    store.delete("inputs/j_x")
    with pytest.raises(BlobNotFoundError):
        store.get("inputs/j_x")


def test_redis_blobstore(redis_url: str, redis_client: redis.Redis) -> None:
    store = make_blobstore(Settings(redis_url=redis_url, job_ttl_seconds=120))
    assert isinstance(store, RedisBlobStore)
    exercise(store)
    store.put("results/j_y.png", b"x", "image/png")
    assert 0 < redis_client.ttl("diffbir:blob:results/j_y.png") <= 120
    assert store.presigned_url("results/j_y.png", 60) is None


def test_s3_blobstore_with_prefix_and_presign(s3_env: dict[str, str]) -> None:
    import httpx

    settings = Settings(s3_prefix="/tenant-a/")
    store = make_blobstore(settings)
    assert isinstance(store, S3BlobStore)
    exercise(store)
    store.put("results/j_z.webp", b"RIFF....WEBP", "image/webp")
    assert store.s3.head_object(Bucket="diffbir-test", Key="tenant-a/results/j_z.webp")["ContentType"] == (
        "image/webp"
    )
    url = store.presigned_url("results/j_z.webp", 60)
    assert url is not None and "X-Amz-Signature" in url
    assert httpx.get(url).content == b"RIFF....WEBP"
    assert "testing" not in repr(settings)  # credentials are SecretStr
    assert not store.queue_put(object(), "inputs/j_s3", b"x", "image/png")  # never joins a Redis MULTI


def test_redis_blobs_join_a_job_store_transaction_on_their_database(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = RedisBlobStore(redis_client, 120)
    with redis.Redis.from_url(redis_url).pipeline(transaction=True) as tx:  # another client, same database
        assert store.queue_put(tx, "inputs/j_tx", b"queued", "image/png")
        assert redis_client.get("diffbir:blob:inputs/j_tx") is None  # nothing written before the MULTI runs
        tx.execute()
    assert store.get("inputs/j_tx") == b"queued"
    assert 0 < redis_client.ttl("diffbir:blob:inputs/j_tx") <= 120
    other_db = redis_url.rsplit("/", 1)[0] + "/1"
    with redis.Redis.from_url(other_db).pipeline(transaction=True) as tx:
        assert not store.queue_put(tx, "inputs/j_other", b"x", "image/png")
        assert len(tx) == 0  # nothing queued: the caller puts it itself
    # The API's case: a MULTI on the async client of the same database.
    assert store.queue_put(aioredis.Redis.from_url(redis_url).pipeline(), "inputs/j_async", b"y", "image/png")


def test_send_side_and_queue_depth(redis_url: str, redis_client: redis.Redis) -> None:
    settings = Settings(redis_url=redis_url)
    app = make_celery(settings)
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1
    assert queue_depth(redis_client) == 0
    enqueue_restore(app, settings, "j_abc")
    enqueue_restore(app, settings, "j_def")
    assert queue_depth(redis_client) == 2
    message = json.loads(redis_client.lindex("gpu", -1))
    assert message["headers"]["task"] == "diffbir.restore"
    assert json.loads(__import__("base64").b64decode(message["body"]))[0] == ["j_abc"]


def test_s3_presigned_urls_use_the_public_endpoint(s3_env: dict[str, str]) -> None:
    store = make_blobstore(Settings(s3_public_endpoint_url="https://files.example.com"))
    store.put("results/j_p.png", b"png", "image/png")
    url = store.presigned_url("results/j_p.png", 60)
    assert url.startswith("https://files.example.com/diffbir-test/results/j_p.png?")
    assert store.get("results/j_p.png") == b"png"  # data path still uses the internal endpoint
