"""Print (or write into README.md) the configuration table of every ``DIFFBIR_*`` setting.

The table is generated from the pydantic-settings classes themselves (``common.settings.Settings`` and the
worker's additions in ``worker.config.WorkerSettings``) so names and defaults can never drift from the code;
``tests/deploy/test_readme.py`` fails when README.md is stale.

    python scripts/settings_table.py            # print the table
    python scripts/settings_table.py --write    # refresh README.md between the markers
    python scripts/settings_table.py --check    # exit 1 if README.md is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.settings import Settings  # noqa: E402
from worker.config import WorkerSettings  # noqa: E402

BEGIN, END = "<!-- settings-table:begin -->", "<!-- settings-table:end -->"
README = ROOT / "README.md"

# Meanings for fields whose Field() has no description yet. A field's own description always wins, so
# documenting a setting in code is enough; this map only fills the gaps.
MEANINGS: dict[str, str] = {
    "redis_url": "Redis for job records, idempotency keys, heartbeats and the Celery broker.",
    "storage_backend": "Where images live: `redis` (small setups, tests) or `s3` (any S3 API: AWS, MinIO).",
    "s3_endpoint_url": "S3 endpoint, e.g. `http://minio:9000`; unset = AWS.",
    "s3_bucket": "Bucket for inputs and results.",
    "s3_prefix": "Key prefix inside the bucket.",
    "s3_region": "S3 region (also used for presigning).",
    "s3_access_key_id": "S3 access key; unset = the default AWS credential chain.",
    "s3_secret_access_key": "S3 secret key.",
    "s3_create_bucket": "Create the bucket at start-up if missing.",
    "presign_ttl_seconds": "Lifetime of presigned result URLs (S3 backend).",
    "host": "API bind address.",
    "port": "API port.",
    "max_upload_bytes": "Largest accepted upload (413 above).",
    "max_input_pixels": "Largest accepted input, width x height (422 above).",
    "max_output_pixels": "Largest output, input pixels x upscale² (422 above).",
    "job_ttl_seconds": "How long job records and results are kept.",
    "retry_after_seconds": "`Retry-After` sent with 429 (queue full, too many active jobs of a key).",
    "idempotency_ttl_seconds": "How long an `Idempotency-Key` maps to its job.",
    "webhook_secret": "Standard Webhooks signing secret (`whsec_<base64>`; other values are used as raw "
    "bytes); unset = unsigned.",
    "webhook_timeout_s": "Timeout of one webhook delivery.",
    "webhook_max_retries": "Delivery retries after the first try.",
    "webhook_backoff_s": "First retry delay; doubles each retry, capped at 60 s.",
    "queue_name": "Celery queue the API sends to and workers consume.",
    "task_name": "Celery task name.",
    "worker_preset": "`full` (official weights) or `tiny` (random weights; tests and demos only).",
    "worker_version": "DiffBIR weights version: `v1`, `v2` or `v2.1`.",
    "weights_dir": "Directory holding the checkpoints (`python -m model download`).",
    "worker_device": "Torch device: `cuda`, `cuda:1`, `cpu`.",
    "worker_precision": "Inference dtype: `fp16`, `bf16` or `fp32`.",
    "worker_heartbeat_interval_s": "How often a worker writes its heartbeat.",
    "task_soft_time_limit_s": "A job past this fails with `timeout`.",
    "task_hard_time_limit_s": "The worker process is killed past this (must exceed the soft limit).",
    "batch_max_size": "Micro-batching: up to this many like jobs per model call (1 = off).",
    "batch_max_wait_s": "How long a worker waits for batch mates.",
    "worker_metrics_addr": "Bind address of the worker's Prometheus endpoint.",
    "worker_transient_backoff_s": "First delay between those retries.",
}


def _default(field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    if value is None:
        return "*(unset)*"
    if isinstance(value, SecretStr):
        return "*(secret)*"
    text = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
    return f"`{text}`" if text != "" else '`""`'


def rows() -> list[tuple[str, str, str, str]]:
    """(variable, default, process, meaning) for every setting, in declaration order."""
    out = []
    for cls, used_by in ((Settings, "all"), (WorkerSettings, "worker")):
        for name, field in cls.model_fields.items():
            if cls is WorkerSettings and name in Settings.model_fields:
                continue
            meaning = field.description or MEANINGS.get(name, "")
            out.append((f"`DIFFBIR_{name.upper()}`", _default(field), used_by, meaning))
    return out


def undocumented() -> list[str]:
    return [var for var, _, _, meaning in rows() if not meaning]


def table() -> str:
    lines = ["| Variable | Default | Used by | Meaning |", "|---|---|---|---|"]
    lines += [
        f"| {var} | {default} | {used} | {meaning.replace('|', '/')} |"
        for var, default, used, meaning in rows()
    ]
    return "\n".join(lines)


def render(readme: str) -> str:
    """README text with the table between the markers replaced by a fresh one."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + table() + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update README.md in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        print(table())
        return 0
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(
                "README.md settings table is stale: run python scripts/settings_table.py --write",
                file=sys.stderr,
            )
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
