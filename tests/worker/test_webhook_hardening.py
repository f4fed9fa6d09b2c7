"""Webhook SSRF and delivery hardening found in the security review (no network: stub resolver/transport)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator

import httpx
import pytest

from common.webhooks import (
    SIGNATURE_HEADER,
    WebhookURLError,
    check_callback_url,
    compute_signature,
    deliver,
    signature_headers,
    verify_signature,
)
from tests.conftest import free_port

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
            "https://hooks.example.com/h", {"a": 1}, "s", client=client, resolver=lambda h, p: [PUBLIC]
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
            "https://hooks.example.com/h",
            {},
            None,
            client=client,
            resolver=lambda h, p: [PUBLIC],
            sleep=lambda s: None,
        )
    assert not result.delivered and len(seen) == 1 and "169.254" not in seen[0]


def test_failed_delivery_logs_no_url_secrets(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook/tok_path_secret?token=query_secret"
    with caplog.at_level(logging.DEBUG, logger="common.webhooks"):
        result = deliver(url, {}, "s", allow_private=True, max_attempts=2, backoff_s=0, timeout_s=1)
    assert not result.delivered and caplog.records
    assert "query_secret" not in caplog.text and "tok_path_secret" not in caplog.text
    assert "127.0.0.1" in caplog.text


@pytest.mark.parametrize("t", ["9" * 400, "+1_700_000_000", "１７００", "-5", ""])
def test_malformed_signature_timestamps_are_refused_not_raised(t: str) -> None:
    body = b'{"event":"job.succeeded"}'
    signature = compute_signature(body, "s", 1_700_000_000)
    assert verify_signature(body, f"t={t},v1={signature}", "s", now=1_700_000_000) is False


def test_signature_format_is_the_documented_one() -> None:
    body = b'{"a":1}'
    header = signature_headers(body, "whsec", timestamp=1_700_000_000)[SIGNATURE_HEADER]
    expected = hmac.new(b"whsec", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"  # docs/worker.md: t=<unix s>,v1=<hex HMAC-SHA256>
    assert verify_signature(body, header, "whsec", now=1_700_000_100)
    assert not verify_signature(body, header, "whsec", now=1_700_000_000 + 301)  # replay window
