"""Optional bearer API keys. Off when ``DIFFBIR_API_KEYS`` is empty (every caller is the anonymous owner).

Jobs are owned by a hash of the key that created them, so the raw key is never stored; a key only ever sees
its own jobs (another owner's job reads as 404, not 403, so ids cannot be probed). Presented keys are
compared against every configured key in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from common.errors import UnauthorizedError
from common.jobs import ANONYMOUS_OWNER
from common.settings import Settings


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def owner_of_key(key: str) -> str:
    return "k_" + _digest(key).hex()[:32]


class ApiKeyAuth:
    def __init__(self, settings: Settings):
        self.digests = [_digest(k.get_secret_value()) for k in settings.api_keys]

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def owner(self, authorization: str | None) -> str:
        if not self.enabled:
            return ANONYMOUS_OWNER
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UnauthorizedError("send 'Authorization: Bearer <api key>'")
        presented = _digest(token)
        matched = False
        for digest in self.digests:  # no early exit: timing does not reveal which key matched
            matched |= hmac.compare_digest(digest, presented)
        if not matched:
            raise UnauthorizedError("invalid API key")
        return owner_of_key(token)


def same_owner(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def caller_of(request: Request) -> str:
    """The owner id of the caller (raises 401 when auth is on and the key is missing or wrong)."""
    auth: ApiKeyAuth = request.app.state.services.auth
    return auth.owner(request.headers.get("authorization"))
