"""Webhook signing (Standard Webhooks), SSRF guard and one delivery attempt against a real local receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from common import webhooks
from common.webhooks import WebhookURLError, check_callback_url, deliver, signature_headers
from tests.worker.conftest import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# ------------------------------------------------------------------------------------------- signatures


def test_signature_headers_verify_with_the_standard_webhooks_package() -> None:
    body = b'{"type":"job.completed","data":{"id":"j_1"}}'
    now = int(time.time())
    headers = signature_headers("msg_1", body, SECRET, now)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == str(now)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    for forged in ({**headers, "webhook-id": "msg_2"}, {**headers, "webhook-timestamp": str(now + 1)}):
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(body, forged)
    stale = signature_headers("msg_1", body, SECRET, now - 301)  # replay window: 5 minutes
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, stale)


def test_signature_is_the_specified_hmac_and_raw_secrets_work() -> None:
    body, ts = b"{}", 1_700_000_000
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, b"msg_x.1700000000.{}", hashlib.sha256).digest()).decode()
    assert signature_headers("msg_x", body, SECRET, ts)["webhook-signature"] == f"v1,{expected}"
    raw = signature_headers("msg_x", body, "plain-secret", ts)["webhook-signature"]
    plain = base64.b64encode(hmac.new(b"plain-secret", b"msg_x.1700000000.{}", hashlib.sha256).digest())
    assert raw == f"v1,{plain.decode()}"
    assert "webhook-signature" not in signature_headers("msg_x", body, None, ts)  # unsigned without secret


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

BODY = b'{"a":1}'


def test_delivery_posts_body_and_headers(receiver: Receiver) -> None:
    headers = signature_headers("msg_1", BODY, SECRET, int(time.time()))
    result = deliver(receiver.url, BODY, headers, allowlist=["127.0.0.1"])
    assert result.delivered and result.status_code == 200
    got_headers, body = receiver.requests[0]
    assert body == BODY and got_headers["Content-Type"] == "application/json"
    assert Webhook(SECRET).verify(body, got_headers) == {"a": 1}


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (408, True),
                                                   (400, False), (410, False)])  # fmt: skip
def test_delivery_classifies_answers(receiver: Receiver, status: int, retryable: bool) -> None:
    receiver.statuses = [status]
    result = deliver(receiver.url, BODY, {}, allow_private=True)
    assert not result.delivered and result.retryable is retryable and result.status_code == status


def test_delivery_to_dead_port_is_retryable_without_raising() -> None:
    receiver = Receiver()
    url = receiver.url
    receiver.close()
    result = deliver(url, BODY, {}, allow_private=True, timeout_s=1)
    assert not result.delivered and result.retryable and result.status_code is None


def test_delivery_refuses_private_target_without_contacting_it(receiver: Receiver) -> None:
    result = deliver(receiver.url, BODY, {})
    assert not result.delivered and not result.retryable and "non-public" in (result.error or "")
    assert receiver.requests == []


def test_delivery_connects_to_the_vetted_address_not_a_rebound_name(receiver: Receiver) -> None:
    """The name is resolved once per attempt and the connection goes to that IP, with the original Host."""
    url = f"http://hooks.example.test:{receiver.port}/cb"
    result = deliver(url, BODY, {}, allowlist=["hooks.example.test"], resolver=lambda h, p: ["127.0.0.1"])
    assert result.delivered
    headers, _ = receiver.requests[0]
    assert headers["Host"] == f"hooks.example.test:{receiver.port}"
