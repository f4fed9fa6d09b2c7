"""``restore-client``: restore one image through the API from the command line, with a progress bar.

    restore-client photo.jpg -o restored.png --task sr --upscale 4 --fidelity 0.7 --steps 50
    restore-client https://images.example.com/photo.jpg -o restored.png   # the server fetches the URL
    restore-client list --status succeeded --limit 20                       # your jobs, newest first

Progress comes live from the job's event stream (polling when the server has none); every request is
retried politely on 429/503 and connection errors.

Exit codes (stable, for scripts):
    0  restored image written
    1  the job failed on the server (worker error, e.g. out_of_memory, bad_input)
    2  usage error (bad arguments, unreadable input file)
    3  the API refused the request (4xx: validation, auth, too large, queue full)
    4  timed out waiting (the job keeps running on the server; its id is printed)
    5  could not reach the API, or it answered with a server error (5xx)
    6  the job was canceled
    130 interrupted (Ctrl-C); the job is canceled on the server unless --keep-on-interrupt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from client.client import DEFAULT_URL, RestoreClient, is_image_url
from client.errors import APIError, JobFailedError, RestoreClientError, WaitTimeoutError
from client.progress import JobProgressBar
from client.vocabulary import FIELDS

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_REJECTED, EXIT_TIMEOUT, EXIT_UNAVAILABLE, EXIT_CANCELED = range(7)
EXIT_INTERRUPTED = 130

_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restore-client",
        description="Restore an image with the DiffBIR service (submit, follow progress, download).",
        epilog="Exit codes: 0 ok, 1 job failed, 2 usage, 3 request refused (4xx), 4 timeout, "
        "5 API unreachable/5xx, 6 canceled, 130 interrupted.",
    )
    parser.add_argument(
        "input", help="image to restore (PNG, JPEG, WebP...): a file, or an https:// or data: URL"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the restored image")
    parser.add_argument("--url", default=os.environ.get("DIFFBIR_URL", DEFAULT_URL), help="API base URL")
    parser.add_argument(
        "--api-key", default=os.environ.get("DIFFBIR_API_KEY"), help="API key (env DIFFBIR_API_KEY)"
    )
    job = parser.add_argument_group("restoration parameters (server defaults when omitted)")
    for spec in FIELDS:
        flag = "--" + (spec.flag or spec.name.replace("_", "-"))
        if spec.type is bool:
            job.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction, help=spec.help)
        else:
            job.add_argument(flag, dest=spec.name, type=spec.type, choices=spec.choices, help=spec.help)
    run = parser.add_argument_group("behaviour")
    run.add_argument("--idempotency-key", help="retrying with the same key never creates a second job")
    run.add_argument("--timeout", type=float, help="seconds to wait for the job (default: no limit)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--keep-on-interrupt", action="store_true", help="on Ctrl-C leave the job running on the server"
    )
    return parser


def _params(args: argparse.Namespace) -> dict[str, object]:
    params = {spec.name: getattr(args, spec.name) for spec in FIELDS}
    params["output_format"] = args.output_format or _FORMATS.get(args.output.suffix.lower())
    return params


def _write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file so an interrupted download never leaves a truncated image behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _err(message: str) -> None:
    print(f"restore-client: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if not is_image_url(args.input) and not Path(args.input).is_file():
        _err(f"cannot read {args.input}")
        return EXIT_USAGE
    bar = JobProgressBar(disable=args.no_progress)
    started = time.monotonic()
    job_id: str | None = None
    with RestoreClient(args.url, args.api_key) as client:
        try:
            image = args.input if is_image_url(args.input) else Path(args.input)
            job = client.submit(image, idempotency_key=args.idempotency_key, **_params(args))
            job_id = job.id
            _err(f"job {job.id} {job.status}")
            bar.update(job)
            final = client.wait(job.id, on_progress=bar, timeout=args.timeout)
            data = client.result(job.id)
        except KeyboardInterrupt:
            bar.close()
            if job_id and not args.keep_on_interrupt:
                try:
                    client.cancel(job_id)
                    _err(f"interrupted: canceled job {job_id}")
                except (RestoreClientError, httpx.HTTPError) as exc:
                    _err(f"interrupted: could not cancel job {job_id}: {exc}")
            elif job_id:
                _err(f"interrupted: job {job_id} keeps running")
            return EXIT_INTERRUPTED
        except JobFailedError as exc:
            bar.close()
            _err(str(exc))
            return EXIT_CANCELED if exc.job.status == "canceled" else EXIT_JOB_FAILED
        except WaitTimeoutError as exc:
            bar.close()
            _err(f"{exc}; follow it with GET {args.url.rstrip('/')}/v1/jobs/{exc.job.id}")
            return EXIT_TIMEOUT
        except APIError as exc:
            bar.close()
            _err(str(exc))
            return EXIT_UNAVAILABLE if exc.status >= 500 else EXIT_REJECTED
        except (httpx.HTTPError, RestoreClientError) as exc:
            bar.close()
            _err(f"cannot talk to {args.url}: {exc}")
            return EXIT_UNAVAILABLE
    bar.close(finished=True)
    _write_atomically(args.output, data)
    result = final.result or {}
    size = f"{result.get('width', '?')}x{result.get('height', '?')}"
    elapsed = time.monotonic() - started
    _err(f"wrote {args.output} ({size}, {len(data)} bytes) in {elapsed:.1f} s, job {final.id}")
    print(args.output)
    return EXIT_OK


def build_list_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restore-client list", description="List your jobs, newest first (one JSON document a line)."
    )
    parser.add_argument("--url", default=os.environ.get("DIFFBIR_URL", DEFAULT_URL), help="API base URL")
    parser.add_argument(
        "--api-key", default=os.environ.get("DIFFBIR_API_KEY"), help="API key (env DIFFBIR_API_KEY)"
    )
    parser.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "canceled"])
    parser.add_argument("--limit", type=int, default=20, help="how many jobs at most (default 20)")
    return parser


def run_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        _err("--limit must be at least 1")
        return EXIT_USAGE
    with RestoreClient(args.url, args.api_key) as client:
        try:
            for count, job in enumerate(client.iter_jobs(status=args.status, page_size=min(args.limit, 100))):
                if count == args.limit:
                    break
                print(json.dumps(job.raw, separators=(",", ":")), flush=True)
        except APIError as exc:
            _err(str(exc))
            return EXIT_UNAVAILABLE if exc.status >= 500 else EXIT_REJECTED
        except (httpx.HTTPError, RestoreClientError) as exc:
            _err(f"cannot talk to {args.url}: {exc}")
            return EXIT_UNAVAILABLE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["list"]:
        return run_list(build_list_parser().parse_args(argv[1:]))
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
