"""Storage keys, secrets in reprs and worker fencing in the shared modules (security/fault review)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from common.blobstore import input_key, result_key
from common.errors import JobStateError
from common.job_store import JobStore
from common.jobs import InputInfo, Job, JobStatus, ResultInfo, new_job_id, result_url, utcnow
from common.keys import cancel_key
from common.params import RestoreParams
from common.settings import Settings, redact_url


@pytest.mark.parametrize(
    "bad", ["../etc/passwd", "j_../../x", "j_short", "", "j_" + "a" * 200, "j_abc/def" * 3]
)
def test_storage_keys_refuse_anything_but_a_job_id(bad: str) -> None:
    with pytest.raises(ValueError):
        input_key(bad)
    with pytest.raises(ValueError):
        result_key(bad, "png")


def test_result_keys_refuse_unknown_extensions() -> None:
    job_id = new_job_id()
    assert result_key(job_id, "webp") == f"results/{job_id}.webp"
    with pytest.raises(ValueError):
        result_key(job_id, "png/../../x")


def test_settings_repr_hides_secrets_and_url_passwords() -> None:
    settings = Settings(
        redis_url="redis://:hunter2@redis.internal:6379/0",
        s3_secret_access_key=SecretStr("aws-secret"),
        webhook_secret=SecretStr("whsec-secret"),
        api_keys=[SecretStr("api-key-secret")],
    )
    for text in (repr(settings), str(settings)):
        for secret in ("hunter2", "aws-secret", "whsec-secret", "api-key-secret"):
            assert secret not in text
    assert "redis://:***@redis.internal:6379/0" in repr(settings)
    assert settings.redis_url == "redis://:hunter2@redis.internal:6379/0"  # the value itself is intact


def test_redact_url_keeps_urls_without_credentials() -> None:
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
    assert redact_url("rediss://user:pw@[::1]:6380/1") == "rediss://user:***@[::1]:6380/1"


def store_settings() -> Settings:
    return Settings(job_ttl_seconds=600)


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, store_settings())


def _job(store: JobStore) -> Job:
    job = Job(
        id=new_job_id(),
        params=RestoreParams(),
        input=InputInfo(width=4, height=4, format="png"),
        created_at=utcnow(),
    )
    store.create(job)
    return job


def test_a_superseded_attempt_cannot_record_anything(store: JobStore) -> None:
    job = _job(store)
    store.mark_running(job.id)
    store.mark_running(job.id)  # redelivered: attempt 2 now owns the job
    info = ResultInfo(url=result_url(job.id), content_type="image/png", width=1, height=1)
    assert store.set_progress(job.id, "sampler", 1, 5, attempt=1) is False
    for write in (
        lambda: store.succeed(job.id, info, None, 1),
        lambda: store.fail(job.id, "internal", "x", None, 1),  # type: ignore[arg-type]
        lambda: store.mark_canceled(job.id, 1),
    ):
        with pytest.raises(JobStateError, match="superseded"):
            write()
    current = store.get(job.id)
    assert current is not None and current.status is JobStatus.running and current.progress is None
    assert store.succeed(job.id, info, None, 2) is not None  # the current attempt still can


class _FinishBeforeFlagWrite:
    """A Redis client proxy that lets the worker finish the job just before the cancel flag is written,
    the race a cancel request can lose (direct SET or inside a MULTI)."""

    def __init__(self, inner: redis.Redis, finish: Callable[[], None]) -> None:
        self.inner, self.finish, self.fired = inner, finish, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _maybe_fire(self, name: Any) -> None:
        if not self.fired and str(name).startswith(cancel_key("")):
            self.fired = True
            self.finish()

    def set(self, name: Any, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fire(name)
        return self.inner.set(name, *args, **kwargs)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        outer, pipe = self, self.inner.pipeline(*args, **kwargs)

        class Pipe:
            def __getattr__(self, name: str) -> Any:
                return getattr(pipe, name)

            def __enter__(self) -> Pipe:
                return self

            def __exit__(self, *exc: object) -> None:
                pipe.reset()

            def set(self, name: Any, *a: Any, **kw: Any) -> Any:
                self.pending = getattr(self, "pending", False) or str(name).startswith(cancel_key(""))
                return pipe.set(name, *a, **kw)

            def execute(self) -> Any:
                if getattr(self, "pending", False):
                    outer._maybe_fire(cancel_key(""))
                return pipe.execute()

        return Pipe()


def test_cancel_racing_with_finish_never_answers_running_for_a_finished_job(
    store: JobStore, redis_client: redis.Redis
) -> None:
    job = _job(store)
    store.mark_running(job.id)
    info = ResultInfo(url=result_url(job.id), content_type="image/png", width=1, height=1)
    racing = JobStore(
        _FinishBeforeFlagWrite(redis_client, lambda: store.succeed(job.id, info)), store_settings()
    )  # type: ignore[arg-type]
    with pytest.raises(JobStateError, match="already succeeded"):
        racing.request_cancel(job.id)
    assert not store.is_cancel_requested(job.id)  # no flag left behind for a finished job
    assert store.get(job.id).status is JobStatus.succeeded  # type: ignore[union-attr]
