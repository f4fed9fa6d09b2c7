"""Webhooks: signing, SSRF guard and delivery with retries.

Why hand-written: the signing scheme is ours (receivers must be able to reimplement it in a few lines), and
the SSRF guard must pin the *resolved* address for the actual connection (no library we use does that),
otherwise a DNS answer that changes between check and connect ("DNS rebinding") could reach internal hosts.

Signature scheme (documented for receivers in docs/worker.md):

    X-DiffBIR-Timestamp: <unix seconds>
    X-DiffBIR-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{raw body}")>

Receivers call `verify_signature(raw_body, header_value, secret)`; it also rejects stale timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-DiffBIR-Signature"
TIMESTAMP_HEADER = "X-DiffBIR-Timestamp"
EVENT_HEADER = "X-DiffBIR-Event"
DEFAULT_TOLERANCE_S = 300
ALLOWED_SCHEMES = ("http", "https")
MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class WebhookURLError(ValueError):
    """The callback URL is malformed or points somewhere we refuse to call (SSRF guard)."""


# ----------------------------------------------------------------------------------------------- signing


def compute_signature(body: bytes, secret: str, timestamp: int) -> str:
    """Hex HMAC-SHA256 of `f"{timestamp}.{body}"` with `secret`."""
    message = str(int(timestamp)).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_headers(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers that let a receiver authenticate `body` and reject replays."""
    ts = int(time.time() if timestamp is None else timestamp)
    sig = compute_signature(body, secret, ts)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: f"t={ts},v1={sig}"}


def verify_signature(
    body: bytes | str,
    header: str | None,
    secret: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when `header` (the X-DiffBIR-Signature value) signs `body` with `secret` and is fresh.

    `body` must be the raw request body exactly as received (do not re-serialise parsed JSON).
    Several `v1=` entries are accepted (secret rotation: the sender may sign with old and new secrets).
    """
    if not header or not secret:
        return False
    raw = body.encode() if isinstance(body, str) else body
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            # Plain decimal of sane length only: int() also takes "+1_0", and a 400-digit value would
            # overflow the float comparison below (an exception where a receiver expects False).
            if not (value.isascii() and value.isdigit() and len(value) <= 12):
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if tolerance_s > 0 and abs(current - timestamp) > tolerance_s:
        return False
    expected = compute_signature(raw, secret, timestamp)
    return any(hmac.compare_digest(expected, c) for c in candidates)


# ----------------------------------------------------------------------------------------------- SSRF guard


def _default_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_allowlist(entries: Iterable[str]) -> tuple[list[IPNetwork], set[str]]:
    """Split allow-list entries into networks (IPs/CIDRs) and exact host names."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.lower().rstrip("."))
    return networks, hosts


def _is_public(ip: IPAddress) -> bool:
    # An IPv6 address that carries an IPv4 one must be judged by that too: IPv4-mapped (::ffff:10.0.0.1),
    # 6to4 (2002:7f00:1::, routed by a 6to4 relay to 127.0.0.1) and Teredo (the client's IPv4).
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _is_public(ip.ipv4_mapped)
        embedded = [ip.sixtofour] if ip.sixtofour is not None else []
        embedded += list(ip.teredo or ())
        if not all(_is_public(v4) for v4 in embedded):
            return False
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


_INET_ATON_CHARS = frozenset("0123456789abcdefx.")


def _literal_ip(host: str) -> IPAddress | None:
    """The IP a host names literally, including the legacy IPv4 spellings that resolvers and browsers
    accept (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``): judged as what they are even when the
    check runs without resolving names."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and set(host) <= _INET_ATON_CHARS and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))  # parses locally, never queries DNS
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class CheckedURL:
    """A callback URL that passed the guard, with the address the delivery must connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str  # the vetted IP; delivery connects here, never re-resolving the name


def check_callback_url(
    url: str,
    allowlist: Sequence[str] = (),
    *,
    allow_private: bool = False,
    resolve: bool = True,
    resolver: Resolver | None = None,
    field: str = "callback_url",
    schemes: Sequence[str] = ALLOWED_SCHEMES,
) -> CheckedURL | None:
    """Validate a callback URL; raise `WebhookURLError` when it is malformed or targets a refused address.

    Only http/https, no credentials in the URL, a host is required.
    `allowlist` (settings.webhook_allow_hosts: exact host names, IPs or CIDRs): empty means any public host;
    non-empty means only hosts it covers, and those are trusted even when they resolve to private addresses
    (the operator named them). Otherwise every address the host resolves to must be public (not private,
    loopback, link-local, multicast, reserved, unspecified) unless `allow_private` (tests only).
    With `resolve=False` only the syntax and literal-IP hosts are checked (returns None for a name); the API
    may use that at submit time when DNS is slow; delivery always resolves and re-checks.
    The API's image downloads use the same guard (``field`` names the URL in messages, ``schemes`` narrows
    the accepted schemes).
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise WebhookURLError(f"{field} must be a non-empty URL of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookURLError(f"{field} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise WebhookURLError(f"{field} must use " + " or ".join(schemes))
    if parts.username or parts.password:
        raise WebhookURLError(f"{field} must not contain credentials")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise WebhookURLError(f"{field} has no host")
    port = port or (443 if scheme == "https" else 80)
    networks, allowed_hosts = _parse_allowlist(allowlist)
    restricted = bool(networks or allowed_hosts)
    host_allowed = host in allowed_hosts

    literal = _literal_ip(host)
    if restricted and literal is None and not host_allowed and not resolve:
        raise WebhookURLError(f"{field} host {host!r} is not in the allow-list")
    if literal is None and not resolve:
        return None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = (resolver or _default_resolver)(host, port)
        except (OSError, UnicodeError) as exc:
            raise WebhookURLError(f"{field} host {host!r} does not resolve: {exc}") from None
        if not addresses:
            raise WebhookURLError(f"{field} host {host!r} does not resolve")
    for addr in addresses:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])  # drop an IPv6 zone id
        listed = host_allowed or any(ip in net for net in networks)
        if restricted and not listed:
            raise WebhookURLError(f"{field} host {host!r} is not in the allow-list")
        if listed or allow_private or _is_public(ip):
            continue
        raise WebhookURLError(
            f"{field} host {host!r} resolves to a non-public address ({ip}); "
            "allow-list the host if this is intended"
        )
    return CheckedURL(url=url, scheme=scheme, host=host, port=port, address=addresses[0])


def validate_callback_url(
    url: str, allowlist: Sequence[str] = (), *, allow_private: bool = False, resolve: bool = True
) -> None:
    """Submit-time check used by the API: raises `WebhookURLError` (a ValueError) with a user-facing message.

    Call as `validate_callback_url(url, settings.webhook_allow_hosts,
    allow_private=settings.webhook_allow_private)`.
    """
    check_callback_url(url, allowlist, allow_private=allow_private, resolve=resolve)


# ----------------------------------------------------------------------------------------------- delivery


@dataclass
class DeliveryResult:
    delivered: bool
    attempts: int
    status_code: int | None = None
    error: str | None = None
    history: list[str] = field(default_factory=list)


def _pinned_request(checked: CheckedURL) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Rewrite the URL to connect to the vetted IP, keeping Host and TLS SNI/verification on the name."""
    parts = urlsplit(checked.url)
    ip = ipaddress.ip_address(checked.address.split("%", 1)[0])
    ip_host = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    default_port = 443 if checked.scheme == "https" else 80
    netloc = ip_host if checked.port == default_port else f"{ip_host}:{checked.port}"
    pinned = urlunsplit((checked.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = checked.host if checked.port == default_port else f"{checked.host}:{checked.port}"
    extensions: dict[str, Any] = {}
    if checked.scheme == "https":
        extensions["sni_hostname"] = checked.host
    return pinned, {"Host": host_header}, extensions


def _host_of(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def deliver(
    url: str,
    payload: dict[str, Any],
    secret: str | None,
    *,
    event: str = "job.finished",
    allowlist: Sequence[str] = (),
    allow_private: bool = False,
    max_attempts: int = 5,
    backoff_s: float = 1.0,
    max_backoff_s: float = 60.0,
    timeout_s: float = 10.0,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    resolver: Resolver | None = None,
) -> DeliveryResult:
    """POST `payload` as JSON to `url`, signed with `secret` (unsigned if None); retry errors, 429, 5xx.

    Each attempt re-runs the SSRF guard and connects to the vetted address (no redirects are followed).
    A 2xx is success; other 4xx are final (the receiver rejected it; retrying will not help). Never raises for
    delivery failures: the caller records the result.
    """
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    result = DeliveryResult(delivered=False, attempts=0)
    own_client = client is None
    http = client or httpx.Client(timeout=timeout_s, follow_redirects=False)
    try:
        for attempt in range(1, max_attempts + 1):
            result.attempts = attempt
            try:
                checked = check_callback_url(url, allowlist, allow_private=allow_private, resolver=resolver)
            except WebhookURLError as exc:
                result.error = str(exc)
                result.history.append(f"refused: {exc}")
                return result  # a refused target never becomes acceptable by retrying
            assert checked is not None
            target, headers, extensions = _pinned_request(checked)
            if secret:
                headers.update(signature_headers(body, secret))
            headers.update(
                {
                    "Content-Type": "application/json",
                    EVENT_HEADER: event,
                    "User-Agent": "diffbir-service-webhook/1",
                }
            )
            retryable = True
            try:
                # Streamed and closed unread: only the status matters, and a hostile receiver could
                # otherwise answer with an endless body that the worker would buffer in memory.
                request = http.build_request(
                    "POST", target, content=body, headers=headers, extensions=extensions, timeout=timeout_s
                )
                response = http.send(request, stream=True)
                response.close()
                result.status_code = response.status_code
                if 200 <= response.status_code < 300:
                    result.delivered, result.error = True, None
                    result.history.append(f"{response.status_code}")
                    return result
                retryable = response.status_code == 429 or response.status_code >= 500
                result.error = f"receiver answered HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                result.error = f"{type(exc).__name__}: {exc}"
            result.history.append(result.error or "")
            if not retryable or attempt == max_attempts:
                break
            delay = min(max_backoff_s, backoff_s * (2 ** (attempt - 1)))
            log.info(
                "webhook to %s failed (%s); retry %d in %.1fs", checked.host, result.error, attempt, delay
            )
            sleep(delay)
    finally:
        if own_client:
            http.close()
    # The host only: callback URLs often carry a token in their path or query.
    log.warning(
        "webhook to %s not delivered after %d attempt(s): %s", _host_of(url), result.attempts, result.error
    )
    return result
