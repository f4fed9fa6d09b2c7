"""Webhook SSRF and delivery hardening found in the security review (no network: stub resolver/transport)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
import redis

from common.jobs import InputInfo, Job, JobStatus, new_job_id, utcnow
from common.params import RestoreParams
from common.settings import Settings
from common.webhook_outbox import Outbox, queue_for_change
from common.webhooks import WebhookURLError, check_callback_url, deliver
from tests.conftest import free_port
from worker.notify import WebhookSender

PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(
    "url",
    [
        "http://[2002:7f00:1::1]/",  # 6to4 carrying 127.0.0.1
        "http://[2002:a9fe:a9fe::1]/latest/meta-data",  # 6to4 carrying 169.254.169.254
        "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped metadata address, hex form
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
    ],
)
def test_ipv6_forms_of_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(WebhookURLError):
        check_callback_url(url)


def test_a_public_6to4_address_is_still_allowed() -> None:
    assert check_callback_url("http://[2002:808:808::1]/") is not None  # 6to4 of 8.8.8.8


@pytest.mark.parametrize(
    "host", ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7f000001", "017700000001"]
)
def test_legacy_ipv4_spellings_are_judged_without_dns(host: str) -> None:
    # The API may check without resolving; these are still literal addresses of 127.0.0.1.
    with pytest.raises(WebhookURLError, match="non-public"):
        check_callback_url(f"http://{host}/hook", resolve=False)


def test_legacy_spelling_of_a_public_address_connects_to_its_canonical_form() -> None:
    checked = check_callback_url("http://134744072/hook", resolve=False)
    assert checked is not None and checked.address == "8.8.8.8"


def test_receiver_body_is_never_buffered() -> None:
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        for _ in range(2000):
            pulled += 1
            yield b"x" * 1024

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=endless()))
    with httpx.Client(transport=transport) as client:
        result = deliver(
            "https://hooks.example.com/h", b"{}", {}, client=client, resolver=lambda h, p: [PUBLIC]
        )
    assert result.delivered and result.status_code == 200
    assert pulled <= 1  # a hostile receiver's endless answer costs the worker nothing


def test_redirects_are_not_followed() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/meta-data"})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        result = deliver(
            "https://hooks.example.com/h", b"{}", {}, client=client, resolver=lambda h, p: [PUBLIC]
        )
    assert not result.delivered and len(seen) == 1 and "169.254" not in seen[0]


def test_failed_delivery_logs_no_url_secrets(
    caplog: pytest.LogCaptureFixture, redis_client: redis.Redis, redis_url: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook/tok_path_secret?token=query_secret"
    job = Job(
        id=new_job_id(),
        params=RestoreParams(callback_url=url),
        input=InputInfo(width=8, height=8, format="png"),
        created_at=utcnow(),
    )
    job.status = JobStatus.succeeded
    with redis_client.pipeline() as pipe:
        queue_for_change(pipe, JobStatus.running, job)
        pipe.execute()
    settings = Settings(redis_url=redis_url, webhook_allow_private=True, webhook_max_retries=1,
                        webhook_backoff_s=0, webhook_timeout_s=1)  # fmt: skip
    outcomes: list[str] = []
    send = WebhookSender(Outbox(redis_client, settings.webhook_lease_s), settings, outcomes.append)
    with caplog.at_level(logging.DEBUG, logger="worker.notify"):
        while send.send_one():
            pass
    assert outcomes == ["failed"] and caplog.records
    assert "query_secret" not in caplog.text and "tok_path_secret" not in caplog.text
    assert "127.0.0.1" in caplog.text
