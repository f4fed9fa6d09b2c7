"""Worker capability documents: what each weights version's workers offer (version, tasks, samplers,
defaults, bounds), published to Redis by a worker at start and read by the API's `GET /v1/models`.

Why Redis: the defaults belong to the weights a worker loaded (model/presets.py builds the document), and
the API never imports the model; the document is the one place the API learns them. One hash field per
version, so workers of several versions can serve one queue and a restart overwrites its own entry.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
import redis.asyncio as aioredis

from common.keys import CAPABILITIES_KEY

log = logging.getLogger(__name__)

Capabilities = dict[str, Any]


def publish(client: redis.Redis, document: Capabilities) -> None:
    """Write (or replace) the document of `document["version"]`."""
    client.hset(CAPABILITIES_KEY, str(document["version"]), json.dumps(document, sort_keys=True))


async def read_all(client: aioredis.Redis) -> list[Capabilities]:
    """Every published document, by version; an entry that does not parse is skipped (and logged)."""
    raw = await client.hgetall(CAPABILITIES_KEY)
    documents = []
    for version, value in sorted(raw.items()):
        try:
            document = json.loads(value)
        except (TypeError, ValueError):
            log.warning("capability document of %r is not JSON; skipped", version)
            continue
        if isinstance(document, dict):
            documents.append(document)
    return documents
