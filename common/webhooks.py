"""Webhooks: Standard Webhooks signing, the SSRF guard, and one delivery attempt.

Signing follows the Standard Webhooks spec (standardwebhooks.com) through its reference package: headers
``webhook-id`` (the message id, the same on every retry, so receivers can deduplicate), ``webhook-timestamp``
(unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")>``).
Secrets are ``whsec_<base64>``; a secret without that prefix is used as raw bytes. Receivers verify with
``standardwebhooks.Webhook(secret).verify(body, headers)`` (which also refuses timestamps over 5 minutes
off) or the same few lines in any language.

Why the guard is hand-written: it must pin the *resolved* address for the actual connection (no library we
use does that), otherwise a DNS answer that changes between check and connect ("DNS rebinding") could reach
internal hosts. Retries, leases and redelivery are ``common.webhook_outbox``'s business.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks import Webhook

log = logging.getLogger(__name__)

ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
ALLOWED_SCHEMES = ("http", "https")
MAX_URL_LENGTH = 2048
USER_AGENT = "diffbir-service-webhook/2"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class WebhookURLError(ValueError):
    """The callback URL is malformed or points somewhere we refuse to call (SSRF guard)."""


# ----------------------------------------------------------------------------------------------- signing


def signer(secret: str) -> Webhook:
    """The Standard Webhooks signer of a configured secret (``whsec_<base64>``, or raw bytes otherwise)."""
    return Webhook(secret if secret.startswith("whsec_") else secret.encode())


def signature_headers(msg_id: str, body: bytes, secret: str | None, timestamp: int) -> dict[str, str]:
    """The Standard Webhooks headers of one message (unsigned, id and timestamp only, without a secret)."""
    headers = {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(int(timestamp))}
    if secret:
        when = datetime.fromtimestamp(int(timestamp), tz=UTC)
        headers[SIGNATURE_HEADER] = signer(secret).sign(msg_id, when, body.decode())
    return headers


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
    retryable: bool  # False: retrying cannot help (refused target, a 4xx other than 408/429)
    status_code: int | None = None
    error: str | None = None


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


def host_of(url: str) -> str:
    """The host of a URL, for logs: callback URLs often carry a token in their path or query."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def deliver(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allowlist: Sequence[str] = (),
    allow_private: bool = False,
    timeout_s: float = 10.0,
    client: httpx.Client | None = None,
    resolver: Resolver | None = None,
) -> DeliveryResult:
    """One POST of ``body`` (JSON) with ``headers`` (the signature headers) to ``url``; never raises.

    The SSRF guard runs first and the connection goes to the vetted address (no redirects are followed). A
    2xx is delivered; 408, 429, 5xx and network errors are retryable; other 4xx are final (the receiver
    rejected it).
    """
    try:
        checked = check_callback_url(url, allowlist, allow_private=allow_private, resolver=resolver)
    except WebhookURLError as exc:
        return DeliveryResult(delivered=False, retryable=False, error=f"refused: {exc}")
    assert checked is not None
    target, request_headers, extensions = _pinned_request(checked)
    request_headers.update(headers)
    request_headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
    own_client = client is None
    http = client or httpx.Client(timeout=timeout_s, follow_redirects=False)
    try:
        # Streamed and closed unread: only the status matters, and a hostile receiver could otherwise
        # answer with an endless body that the sender would buffer in memory.
        request = http.build_request(
            "POST", target, content=body, headers=request_headers, extensions=extensions, timeout=timeout_s
        )
        response = http.send(request, stream=True)
        response.close()
    except httpx.HTTPError as exc:
        return DeliveryResult(delivered=False, retryable=True, error=f"{type(exc).__name__}: {exc}")
    finally:
        if own_client:
            http.close()
    code = response.status_code
    if 200 <= code < 300:
        return DeliveryResult(delivered=True, retryable=False, status_code=code)
    retryable = code in (408, 429) or code >= 500
    return DeliveryResult(False, retryable, code, f"receiver answered HTTP {code}")
