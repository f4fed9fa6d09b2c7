"""The worker lease (short TTL, renewed by its own thread, apart from readiness) and what hangs off it:
dead-worker recovery within seconds, hand-back after an outage, and the graceful shutdown's hand-back."""

from __future__ import annotations

import time

import pytest
import redis

from common.keys import HELD_PREFIX, OWNER_PREFIX, lease_key
from common.workers import WorkerRegistry
from tests.worker.conftest import Harness
from worker import lifecycle, runner
from worker.lease import LeaseKeeper
from worker.recovery import Ownership


def test_lease_is_renewed_and_dropped_on_stop(harness: Harness) -> None:
    calls: list[int] = []
    keeper = LeaseKeeper(harness.ctx.workers, "w-lease", ttl_s=1.0, housekeeping=[lambda: calls.append(1)])
    keeper.start()
    try:
        time.sleep(1.6)  # longer than the TTL: only renewals keep it alive
        assert harness.client.exists(lease_key("w-lease"))
        assert 0 < harness.client.pttl(lease_key("w-lease")) <= 1000
        assert len(calls) >= 3  # housekeeping ran on every tick (every ttl/4)
    finally:
        keeper.stop()
    assert not harness.client.exists(lease_key("w-lease"))


def test_housekeeping_errors_and_redis_outages_never_stop_the_lease(harness: Harness) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    keeper = LeaseKeeper(harness.ctx.workers, "w-sturdy", ttl_s=1.0, housekeeping=[broken])
    assert keeper.tick() is True
    gone = WorkerRegistry(redis.Redis(port=1, socket_connect_timeout=0.2))
    assert LeaseKeeper(gone, "w-offline", ttl_s=1.0).tick() is False


def test_dead_workers_job_is_requeued_once_its_lease_lapses(harness: Harness) -> None:
    job = harness.submit()
    dead = Ownership(harness.client, harness.ctx.store, "w-dies", 3600, publish=lambda _: None)
    dead.claim(job.id)
    harness.ctx.workers.renew_lease("w-dies", ttl_s=0.3)
    published: list[str] = []
    reaper = Ownership(harness.client, harness.ctx.store, "w-reaper", 3600, publish=published.append)
    assert reaper.requeue_from_dead_workers() == 0  # lease alive
    time.sleep(0.4)
    assert reaper.requeue_from_dead_workers() == 1
    assert published == [job.id]


def test_job_unrecorded_through_an_outage_is_handed_back_when_redis_returns(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[str] = []
    me = harness.ctx.settings.worker_id
    harness.ctx.ownership = Ownership(harness.client, harness.ctx.store, me, 3600, publish=published.append)
    job = harness.submit()

    def storage_gone(*_args: object) -> list[str]:
        raise redis.ConnectionError("Connection refused")

    redis_down = {"now": True}
    real_hand_back = harness.ctx.ownership.hand_back

    def hand_back(job_id: str, holder: str | None = None) -> bool:
        if redis_down["now"]:
            raise redis.ConnectionError("Connection refused")
        return real_hand_back(job_id, holder)

    monkeypatch.setattr(lifecycle, "run_executions", storage_gone)
    monkeypatch.setattr(harness.ctx.ownership, "hand_back", hand_back)
    with pytest.raises(redis.ConnectionError):
        lifecycle.run_job(harness.ctx, job.id)
    assert harness.ctx.hand_back_later == {job.id}
    assert harness.client.get(OWNER_PREFIX + job.id) == me.encode()  # still "running" on a live worker
    redis_down["now"] = False
    runner.hand_back_later(harness.ctx)  # the lease thread's next tick, Redis being back
    assert published == [job.id] and harness.ctx.hand_back_later == set()
    assert not harness.client.exists(OWNER_PREFIX + job.id)
    assert harness.client.scard(HELD_PREFIX + me) == 0


def test_shutdown_past_its_grace_hands_back_and_exits(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = harness.make_ctx(worker_shutdown_grace_s=0.2)
    published: list[str] = []
    ctx.ownership = Ownership(harness.client, ctx.store, ctx.settings.worker_id, 3600, published.append)
    job = harness.submit()
    ctx.ownership.claim(job.id)  # the job it is running when SIGTERM comes
    monkeypatch.setattr(runner, "_context", ctx)
    monkeypatch.setattr(runner, "_shutdown_timer", None)
    runner.begin_shutdown()
    deadline = time.monotonic() + 10
    while not harness.exits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert harness.exits == [0]
    assert published == [job.id]
    assert not harness.client.exists(OWNER_PREFIX + job.id)


def test_shutdown_within_its_grace_cancels_the_hand_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = harness.make_ctx(worker_shutdown_grace_s=0.3)
    monkeypatch.setattr(runner, "_context", ctx)
    monkeypatch.setattr(runner, "_shutdown_timer", None)
    runner.begin_shutdown()
    runner.shutdown()  # the current job finished in time: Celery's own shutdown follows
    time.sleep(0.5)
    assert harness.exits == []


def test_job_held_but_not_running_here_is_handed_back_on_the_second_tick(harness: Harness) -> None:
    """E.g. a release lost in a Redis failover: Redis says we hold it, this process is not running it."""
    published: list[str] = []
    me = harness.ctx.settings.worker_id
    harness.ctx.ownership = Ownership(harness.client, harness.ctx.store, me, 3600, publish=published.append)
    stray, busy = harness.submit(), harness.submit()
    harness.ctx.ownership.claim(stray.id)
    harness.ctx.ownership.claim(busy.id)
    harness.ctx.running.add(busy.id)  # the job this process really is running
    runner.hand_back_strays(harness.ctx)
    assert published == []  # one sighting could be a claim not yet registered
    runner.hand_back_strays(harness.ctx)
    assert published == [stray.id]
    assert harness.ctx.ownership.held() == [busy.id]
