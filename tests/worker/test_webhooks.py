"""Webhook signing, SSRF guard and delivery against a real local HTTP receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from common import webhooks
from common.webhooks import WebhookURLError, check_callback_url, deliver, signature_headers, verify_signature
from tests.worker.conftest import Receiver

SECRET = "s3cr3t"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# ------------------------------------------------------------------------------------------- signatures


def test_signature_roundtrip_and_tampering() -> None:
    body = b'{"id":"j_1","status":"succeeded"}'
    header = signature_headers(body, SECRET, timestamp=1_700_000_000)[webhooks.SIGNATURE_HEADER]
    assert header.startswith("t=1700000000,v1=")
    assert verify_signature(body, header, SECRET, now=1_700_000_010)
    assert verify_signature(body.decode(), header, SECRET, now=1_700_000_010)
    assert not verify_signature(body + b" ", header, SECRET, now=1_700_000_010)
    assert not verify_signature(body, header, "other", now=1_700_000_010)
    # Stale (replayed) deliveries are refused.
    assert not verify_signature(body, header, SECRET, now=1_700_000_000 + 301)
    # Changing the timestamp breaks the signature.
    forged = header.replace("t=1700000000", "t=1700000100")
    assert not verify_signature(body, forged, SECRET, now=1_700_000_100)
    for bad in ("", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000"):
        assert not verify_signature(body, bad, SECRET, now=1_700_000_000)


def test_signature_accepts_any_of_several_v1_values() -> None:
    body = b"{}"
    good = webhooks.compute_signature(body, SECRET, 100)
    assert verify_signature(body, f"t=100,v1={'0' * 64},v1={good}", SECRET, now=100)


# ------------------------------------------------------------------------------------------- SSRF guard


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://10.1.2.3/x",
        "http://192.168.0.1:8080/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://100.64.0.1/",
        "http://localhost/",
    ],
)
def test_guard_refuses_non_public_targets(url: str) -> None:
    with pytest.raises(WebhookURLError):
        check_callback_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "http://user:pw@example.com/",
        "http:///nohost",
        "",
        "x" * 3000,
        "http://[::1/",
    ],
)
def test_guard_refuses_malformed_urls(url: str) -> None:
    with pytest.raises(WebhookURLError):
        check_callback_url(url, resolve=False)


def test_guard_checks_every_resolved_address() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.5"]  # one public, one private: refuse

    with pytest.raises(WebhookURLError, match="non-public"):
        check_callback_url("https://hooks.example.com/", resolver=resolver)
    checked = check_callback_url("https://hooks.example.com/", resolver=lambda h, p: ["93.184.216.34"])
    assert checked is not None
    assert (checked.address, checked.port, checked.host) == ("93.184.216.34", 443, "hooks.example.com")


def test_allowlist_trusts_listed_hosts_and_restricts_others() -> None:
    assert check_callback_url("http://127.0.0.1:9/x", ["127.0.0.1"]) is not None
    assert check_callback_url("http://10.2.3.4/", ["10.0.0.0/8"]) is not None
    internal = check_callback_url(
        "http://hooks.internal/", ["hooks.internal"], resolver=lambda h, p: ["10.9.9.9"]
    )
    assert internal is not None and internal.address == "10.9.9.9"
    with pytest.raises(WebhookURLError, match="allow-list"):
        check_callback_url("http://93.184.216.34/", ["127.0.0.1"])
    with pytest.raises(WebhookURLError, match="allow-list"):
        check_callback_url("http://other.example.com/", ["hooks.example.com"], resolve=False)
    # allow_private is a blanket opt-in (tests only).
    assert check_callback_url("http://127.0.0.1/", allow_private=True) is not None


def test_validate_without_resolving_accepts_names_but_checks_literals() -> None:
    webhooks.validate_callback_url("https://unresolvable.invalid/hook", resolve=False)
    with pytest.raises(WebhookURLError):
        webhooks.validate_callback_url("http://127.0.0.1/hook", resolve=False)


# ------------------------------------------------------------------------------------------- delivery


def test_delivery_signs_and_receiver_verifies(receiver: Receiver) -> None:
    payload = {"id": "j_abc", "status": "succeeded"}
    result = deliver(receiver.url, payload, SECRET, allowlist=["127.0.0.1"], sleep=lambda s: None)
    assert result.delivered and result.attempts == 1 and result.status_code == 200
    headers, body = receiver.requests[0]
    assert json.loads(body) == payload
    assert verify_signature(body, headers[webhooks.SIGNATURE_HEADER], SECRET)
    assert headers[webhooks.EVENT_HEADER] == "job.finished"


def test_delivery_retries_5xx_with_exponential_backoff(receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    sleeps: list[float] = []
    result = deliver(receiver.url, {"a": 1}, SECRET, allow_private=True, backoff_s=0.5, sleep=sleeps.append)
    assert result.delivered and result.attempts == 3
    assert sleeps == [0.5, 1.0]
    assert len(receiver.requests) == 3


def test_delivery_gives_up_on_4xx_and_after_max_attempts(receiver: Receiver) -> None:
    receiver.statuses = [400]
    result = deliver(receiver.url, {"a": 1}, SECRET, allow_private=True, sleep=lambda s: None)
    assert not result.delivered and result.attempts == 1 and result.status_code == 400
    receiver.statuses = [500] * 10
    result = deliver(receiver.url, {"a": 1}, SECRET, allow_private=True, max_attempts=3, sleep=lambda s: None)
    assert not result.delivered and result.attempts == 3 and "500" in (result.error or "")


def test_delivery_to_dead_port_fails_without_raising() -> None:
    receiver = Receiver()
    url = receiver.url
    receiver.close()
    result = deliver(
        url, {"a": 1}, SECRET, allow_private=True, max_attempts=2, timeout_s=1, sleep=lambda s: None
    )
    assert not result.delivered and result.attempts == 2 and result.status_code is None


def test_delivery_refuses_private_target_without_contacting_it(receiver: Receiver) -> None:
    result = deliver(receiver.url, {"a": 1}, SECRET, sleep=lambda s: None)
    assert not result.delivered and "non-public" in (result.error or "")
    assert receiver.requests == []


def test_delivery_connects_to_the_vetted_address_not_a_rebound_name(receiver: Receiver) -> None:
    """The name is resolved once per attempt and the connection goes to that IP, with the original Host."""
    url = f"http://hooks.example.test:{receiver.port}/cb"
    result = deliver(
        url,
        {"a": 1},
        SECRET,
        allowlist=["hooks.example.test"],
        resolver=lambda h, p: ["127.0.0.1"],
        sleep=lambda s: None,
    )
    assert result.delivered
    headers, _ = receiver.requests[0]
    assert headers["Host"] == f"hooks.example.test:{receiver.port}"
