"""Blob storage for inputs and results, behind one small protocol.

Keys come from job ids only (``inputs/{job_id}``, ``results/{job_id}.{ext}``), never from client input, so a
client can neither choose nor traverse storage paths. ``RedisBlobStore`` suits a single-node deployment and
tests; ``S3BlobStore`` is for production (any S3-compatible endpoint) and can hand out presigned GET URLs so
result bytes bypass the API. Blobs on Redis expire with the job TTL; on S3 use a bucket lifecycle rule.
A blob store on the job store's Redis can also queue a put on a job-store transaction (``queue_put``), so an
input and its job record are written together.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import redis

from common.connections import connect, same_database
from common.formats import IMAGE_FORMATS
from common.jobs import is_valid_job_id
from common.keys import blob_key
from common.settings import Settings


def _checked_id(job_id: str) -> str:
    # The last line of defence for "keys derive from job ids only": a malformed id (a slash, "..", a very
    # long string) never becomes an object key, whichever caller forgot to validate it.
    if not is_valid_job_id(job_id):
        raise ValueError(f"not a job id: {job_id[:80]!r}")
    return job_id


def input_key(job_id: str) -> str:
    return f"inputs/{_checked_id(job_id)}"


def result_key(job_id: str, ext: str) -> str:
    if ext not in IMAGE_FORMATS:
        raise ValueError(f"not a result format: {ext[:20]!r}")
    return f"results/{_checked_id(job_id)}.{ext}"


class BlobNotFoundError(KeyError):
    """The blob does not exist (expired, deleted, or never written)."""


@runtime_checkable
class BlobStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def presigned_url(self, key: str, ttl: int) -> str | None: ...

    def queue_put(self, tx: Any, key: str, data: bytes, content_type: str) -> bool:
        """Queue this put on ``tx``, a Redis transaction (sync or async pipeline) another store is building,
        so it commits or fails with that store's writes. False, queuing nothing, when this store's blobs do
        not live on that Redis database: the caller then puts the blob itself."""
        ...


class RedisBlobStore:
    """Blobs as Redis strings under ``diffbir:blob:{key}`` with a TTL; no presigned URLs."""

    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.redis = client
        self.ttl = ttl_seconds

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # The content type is derived from the key's job (params.output_format), so it is not stored.
        self.redis.set(blob_key(key), data, ex=self.ttl)

    def get(self, key: str) -> bytes:
        data = self.redis.get(blob_key(key))
        if data is None:
            raise BlobNotFoundError(key)
        return data

    def delete(self, key: str) -> None:
        self.redis.delete(blob_key(key))

    def presigned_url(self, key: str, ttl: int) -> str | None:
        return None

    def queue_put(self, tx: Any, key: str, data: bytes, content_type: str) -> bool:
        if not same_database(tx, self.redis):
            return False
        tx.set(blob_key(key), data, ex=self.ttl)
        return True


class S3BlobStore:
    """Blobs in an S3 bucket under an optional prefix; presigned GET URLs for results."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create_bucket: bool = False,
        presign_endpoint_url: str | None = None,
        client: Any = None,
    ):
        import boto3  # local import: only S3 deployments pay for it
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

        def make_client(endpoint: str | None) -> Any:
            return boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=config,
            )

        config = Config(
            signature_version="s3v4",  # SigV4 presigned URLs work on every region and S3-compatible store
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        )
        self.s3 = client or make_client(endpoint_url)
        # Signing is local; a second client only changes the host written into URLs handed to clients.
        self.presigner = make_client(presign_endpoint_url) if presign_endpoint_url else self.s3
        if create_bucket:
            self._ensure_bucket(region)

    def _ensure_bucket(self, region: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if region != "us-east-1":  # S3 rejects an explicit us-east-1 location constraint
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self.s3.create_bucket(**kwargs)
            except ClientError as exc:  # a concurrent process may have created it
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",):
                    raise

    def _name(self, key: str) -> str:
        return self.prefix + key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._name(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._name(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobNotFoundError(key) from exc
            raise

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._name(key))

    def presigned_url(self, key: str, ttl: int) -> str | None:
        return self.presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._name(key)}, ExpiresIn=int(ttl)
        )

    def queue_put(self, tx: Any, key: str, data: bytes, content_type: str) -> bool:
        return False  # objects cannot join a Redis transaction


def make_blobstore(settings: Settings, redis_client: redis.Redis | None = None) -> BlobStore:
    if settings.storage_backend == "s3":
        return S3BlobStore(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None,
            secret_access_key=(
                settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
            ),
            create_bucket=settings.s3_create_bucket,
            presign_endpoint_url=settings.s3_public_endpoint_url,
        )
    return RedisBlobStore(redis_client or connect(settings), settings.job_ttl_seconds)
