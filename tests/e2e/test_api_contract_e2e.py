"""The API contract against the real stack (API + worker + Redis processes): a client generated from the live
OpenAPI document with a maintained generator (openapi-python-client) drives it through its typed models, so
a spec regression (an untyped answer, a missing code, a field a form cannot send) fails here; and the JSON
submission by URL, sync mode and absolute URLs end to end."""

from __future__ import annotations

import base64
import importlib
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from PIL import Image
from standardwebhooks.webhooks import Webhook

from tests.e2e.conftest import API_KEYS, WEBHOOK_SECRET, Stack, wait_until
from tests.service.test_json_submit import ImageServer
from tests.worker.conftest import Receiver, png_bytes

pytestmark = pytest.mark.parametrize("stack", ["redis"], indirect=True)

IMAGE = png_bytes(32, 32, (30, 90, 150))
PACKAGE = "diffbir_generated"
_GENERATED: dict[str, Path] = {}
# As docs/api.md shows: the generator knows JSON, text and octet-stream bodies; the result is image/<format>.
CONFIG = f"""package_name_override: {PACKAGE}
project_name_override: diffbir-generated
post_hooks: []
content_type_overrides:
  image/png: application/octet-stream
  image/jpeg: application/octet-stream
  image/webp: application/octet-stream
"""


def _generate(spec_url: str, out_dir: Path) -> Path:
    """Run openapi-python-client (its CLI, in a subprocess) on the live spec; returns the import root."""
    if spec_url not in _GENERATED:
        config = out_dir / "config.yaml"
        config.write_text(CONFIG)
        exe = Path(sys.executable).with_name("openapi-python-client")
        cmd = [str(exe), "generate", "--url", spec_url, "--meta", "none", "--config", str(config)]
        cmd += ["--output-path", str(out_dir / PACKAGE), "--fail-on-warning"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        _GENERATED[spec_url] = out_dir
    return _GENERATED[spec_url]


@pytest.fixture
def generated(live_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = _generate(f"{live_stack.http.base_url}/openapi.json", tmp_path_factory.mktemp("generated"))
    sys.path.insert(0, str(root))
    try:
        api = {
            name: importlib.import_module(f"{PACKAGE}.api.jobs.{name}")
            for name in ("submit_job", "get_job", "get_job_result", "list_jobs")
        }
        package = importlib.import_module(PACKAGE)
        client = package.AuthenticatedClient(
            base_url=str(live_stack.http.base_url), token=API_KEYS[0], timeout=90
        )
        models = importlib.import_module(f"{PACKAGE}.models")
        types = importlib.import_module(f"{PACKAGE}.types")
        yield SimpleNamespace(client=client, models=models, types=types, **api)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_generated_client_typed_round_trip(generated: SimpleNamespace) -> None:
    g, m = generated, generated.models
    image = g.types.File(payload=io.BytesIO(IMAGE), file_name="in.png", mime_type="image/png")
    body = m.SubmitJobFilesBody(image=image, steps=2, upscale=2.0, task=m.SubmitJobFilesBodyTask.SR)
    accepted = g.submit_job.sync_detailed(client=g.client, body=body)
    assert accepted.status_code == 202, accepted.content
    job = accepted.parsed
    assert isinstance(job, m.JobDocument) and job.status is m.JobStatus.QUEUED
    assert job.params.steps == 2 and job.params.seed is None  # an unset seed is not sent as the text "None"
    assert job.urls.get == accepted.headers["location"]

    def finished() -> Any:
        polled = g.get_job.sync_detailed(job.id, client=g.client).parsed
        assert isinstance(polled, m.JobDocument)
        return polled if polled.status in (m.JobStatus.SUCCEEDED, m.JobStatus.FAILED) else None

    done = wait_until(finished, 90, 0.1, what="generated-client job finished")
    assert done.status is m.JobStatus.SUCCEEDED and done.error is None
    assert done.progress.fraction == 1.0 and done.result.width == 64
    assert done.expires_at > done.finished_at

    result = g.get_job_result.sync_detailed(job.id, client=g.client)
    assert result.status_code == 200 and isinstance(result.parsed, g.types.File)
    assert Image.open(result.parsed.payload).size == (64, 64)

    listed = g.list_jobs.sync_detailed(client=g.client, limit=5, status=m.JobStatus.SUCCEEDED)
    assert listed.status_code == 200 and isinstance(listed.parsed, m.JobPage)
    assert job.id in [j.id for j in listed.parsed.jobs]  # newest first: it is on the first page
    assert all(isinstance(j, m.JobDocument) and j.status is m.JobStatus.SUCCEEDED for j in listed.parsed.jobs)
    bad_cursor = g.list_jobs.sync_detailed(client=g.client, cursor="not-a-cursor")
    assert bad_cursor.status_code == 422 and bad_cursor.parsed.code is m.ProblemCode.VALIDATION_ERROR

    missing = g.get_job.sync_detailed("j_" + "0" * 22, client=g.client)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, m.Problem) and missing.parsed.code is m.ProblemCode.NOT_FOUND

    invalid = g.submit_job.sync_detailed(client=g.client, body=m.SubmitJobFilesBody(image=image, steps=1000))
    assert invalid.status_code == 422
    assert invalid.parsed.code is m.ProblemCode.VALIDATION_ERROR
    assert [e.loc for e in invalid.parsed.errors] == [["steps"]]


def test_generated_client_json_submit_with_sync_wait(generated: SimpleNamespace) -> None:
    g, m = generated, generated.models
    uri = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    body = m.RestoreJsonBody(image=uri, steps=2, upscale=2.0, seed=5)
    answer = g.submit_job.sync_detailed(client=g.client, body=body, prefer="wait=60")
    assert answer.status_code == 201, answer.content
    assert answer.headers["preference-applied"] == "wait=60"
    assert answer.parsed.status is m.JobStatus.SUCCEEDED and answer.parsed.params.seed == 5


def test_url_submission_sync_wait_and_absolute_urls(live_stack: Stack) -> None:
    server = ImageServer()
    receiver = Receiver()
    try:
        url = server.serve("/photo.png", png_bytes(24, 16, (200, 40, 40)), **{"Content-Type": "image/png"})
        start = time.monotonic()
        resp = live_stack.http.post(
            "/v1/restore",
            json={"image": url, "steps": 2, "upscale": 2, "callback_url": receiver.url},
            headers=live_stack.headers(Prefer="wait=60"),
            timeout=90,
        )
        assert resp.status_code == 201, resp.text
        assert time.monotonic() - start < 60  # answered when the job finished, not at the deadline
        doc = resp.json()
        assert doc["status"] == "succeeded" and doc["input"]["width"] == 24
        base = f"http://127.0.0.1:{live_stack.api_port}/v1/jobs/{doc['id']}"
        assert doc["urls"]["get"] == base and doc["result"]["url"] == f"{base}/result"
        image = httpx.get(doc["result"]["url"], headers=live_stack.headers(), timeout=10)
        assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (48, 32)
        wait_until(lambda: receiver.requests, 15, what="webhook delivery")
        headers, body = receiver.requests[-1]  # the `completed` one (the default filter sends only it)
        hooked = Webhook(WEBHOOK_SECRET).verify(body, headers)["data"]  # with the same absolute URLs
        assert hooked["urls"] == doc["urls"] and hooked["result"]["url"] == f"{base}/result"
        refused = live_stack.http.post(
            "/v1/restore", json={"image": server.base + "/missing.png"}, headers=live_stack.headers()
        )
        assert refused.status_code == 422 and refused.json()["errors"][0]["loc"] == ["image"]
    finally:
        server.close()
        receiver.close()
