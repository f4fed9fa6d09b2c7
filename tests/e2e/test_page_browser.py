"""The page at ``/`` in a real browser (Debian's Chromium driven by Playwright) against the real e2e stack:
API process + tiny-preset worker + Redis, auth on; the main flow also with S3 (moto) storage.

Every request the browser makes goes through a route handler: anything off loopback (``127.0.0.1``) is
aborted and recorded, and each test asserts there was none (the page, /docs and /redoc must work
on an air-gapped host). Screenshots and the page-weight figure go to ``$DIFFBIR_TEST_ARTIFACTS`` (default
``tmp/artifacts``), whose path is printed.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import playwright.sync_api as playwright_api
import pytest
from PIL import Image

from tests.conftest import free_port
from tests.e2e.conftest import API_KEYS, ROOT, TERMINAL, ManagedProcess, Stack, wait_until

CHROMIUM = os.environ.get("DIFFBIR_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("DIFFBIR_TEST_ARTIFACTS", ROOT / "tmp" / "artifacts"))
KEY = API_KEYS[0]

pytestmark = pytest.mark.slow
# Every test runs against the Redis-backed stack; the main flow also against S3 (results come from object
# storage through a presigned redirect).
REDIS = pytest.mark.parametrize("stack", ["redis"], indirect=True)
BOTH_BACKENDS = pytest.mark.parametrize("stack", ["redis", "s3"], indirect=True)
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def sample_png(width: int = 48, height: int = 32) -> bytes:
    """A small picture with structure (gradient + shapes), so before and after are told apart by eye."""
    img = Image.new("RGB", (width, height))
    img.putdata(
        [
            (
                (x * 255) // width,
                (y * 255) // height,
                255 if (x // 8 + y // 8) % 2 else 60,
            )
            for y in range(height)
            for x in range(width)
        ]
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class Browser:
    """One Chromium for the module; a fresh context (own sessionStorage) per page, with request policing."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.driver = playwright_api.sync_playwright().start()
        self.chromium = self.driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        self.outside: list[str] = []
        self.csp_errors: list[str] = []

    def page(self, width: int = 1280, height: int = 900, base_url: str | None = None) -> Any:
        context = self.chromium.new_context(
            base_url=base_url or self.base_url,
            viewport={"width": width, "height": height},
            accept_downloads=True,
        )

        def on_loopback(url: str) -> bool:
            return url.startswith(("data:", "blob:")) or urlsplit(url).hostname in LOOPBACK

        def police(route: Any) -> None:
            if on_loopback(route.request.url):
                route.continue_()
            else:
                self.outside.append(route.request.url)
                route.abort()

        context.route("**/*", police)
        # The router does not see redirect targets (S3 presigned URLs): every request is logged here too.
        context.on("request", lambda r: None if on_loopback(r.url) else self.outside.append(r.url))
        page = context.new_page()
        page.on(
            "console",
            lambda m: self.csp_errors.append(m.text) if "Content Security Policy" in m.text else None,
        )
        return page

    def close(self) -> None:
        self.chromium.close()
        self.driver.stop()


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (it installs Debian's chromium)")
    b = Browser(f"http://127.0.0.1:{stack.api_port}")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def clean(browser: Browser, live_stack: Stack) -> Iterator[Browser]:
    """The browser, with the request log emptied and a live worker (a fault test may have killed it)."""
    browser.outside.clear()
    browser.csp_errors.clear()
    yield browser
    assert browser.outside == [], f"requests left loopback: {browser.outside}"
    assert browser.csp_errors == [], browser.csp_errors


@pytest.fixture(scope="module")
def open_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second API process on the same Redis and worker with auth off; its base URL."""
    port = free_port()
    env = dict(stack.env, DIFFBIR_API_KEYS="[]", DIFFBIR_PORT=str(port), DIFFBIR_HOST="127.0.0.1")
    api = ManagedProcess("api-open", [sys.executable, "-m", "service"], env, tmp_path_factory.mktemp("open"))
    api.start()
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert api.alive, api.tail()
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, 0.1, what="open API up")
        yield base
    finally:
        api.stop()


def s3_client(stack: Stack) -> Any:
    import boto3

    env = stack.env
    return boto3.client(
        "s3",
        endpoint_url=env["DIFFBIR_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["DIFFBIR_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["DIFFBIR_S3_SECRET_ACCESS_KEY"],
    )


def allow_page_origin(stack: Stack) -> None:
    """The CORS rule docs/api.md asks S3 deployments for: results may be read by the page's origin."""
    origin = f"http://127.0.0.1:{stack.api_port}"
    rule = {"AllowedOrigins": [origin], "AllowedMethods": ["GET"], "AllowedHeaders": ["*"]}
    bucket = stack.env["DIFFBIR_S3_BUCKET"]
    s3_client(stack).put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule]})


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    print(f"\nartifact: {path}")
    return path


def open_page(browser: Browser, **options: Any) -> Any:
    page = browser.page(**options)
    page.goto("/")
    page.wait_for_selector("body[data-ready='1']")
    return page


def choose_file(page: Any, name: str, data: bytes, mime: str = "image/png") -> None:
    page.set_input_files("#image", files=[{"name": name, "mimeType": mime, "buffer": data}])


def watch_progress(page: Any, until: str, timeout_s: float = 120.0) -> list[tuple[float, str]]:
    """Sample the progress bar and status line until ``until`` (a selector) is visible."""
    samples: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout_s
    while not page.is_visible(until):
        assert time.monotonic() < deadline, f"{until} not visible after {timeout_s}s; saw {samples[-5:]}"
        value, text = page.evaluate(
            "[document.querySelector('#progress').value, document.querySelector('#status-text').textContent]"
        )
        if not samples or samples[-1] != (value, text):
            samples.append((value, text))
        page.wait_for_timeout(15)
    return samples


@BOTH_BACKENDS
def test_restore_shows_moving_progress_result_and_downloads_the_api_bytes(
    stack: Stack, clean: Browser
) -> None:
    if stack.backend == "s3":
        allow_page_origin(stack)  # what a real bucket needs (moto's server answers any origin anyway)
    page = open_page(clean)
    assert page.get_attribute("#restore-form", "data-options-source") in ("models", "openapi")
    assert page.locator("#sampler option").count() >= 2  # the vocabulary came from the server
    page.fill("#api_key", KEY)
    page.dispatch_event("#api_key", "change")
    choose_file(page, "photo.png", sample_png())
    expect = playwright_api.expect
    expect(page.locator("#image-status")).to_contain_text("48×32")
    page.click("summary")  # advanced options, folded by default
    page.fill("#steps", "24")
    page.fill("#seed", "7")
    page.fill("#upscale", "2")
    page.click("#submit")

    samples = watch_progress(page, "#compare")
    moving = sorted({value for value, _ in samples if 0 < value < 1})
    steps = {text for _, text in samples if "step" in text}
    assert len(moving) >= 2 and len(steps) >= 2, f"progress did not visibly move: {samples}"

    expect(page.locator("#status-text")).to_have_text("Done.")
    assert page.get_attribute("#status-box", "data-via") == "events"  # the live stream, not polling
    job_id = page.get_attribute("#status-box", "data-job")
    doc = stack.job(job_id)
    assert doc["status"] == "succeeded" and doc["params"]["steps"] == 24 and doc["params"]["seed"] == 7
    after = page.locator("#after")
    assert after.evaluate("img => img.complete && img.naturalWidth") == 96
    assert page.locator("#before").evaluate("img => img.naturalWidth") == 48  # the input, drawn at 96 wide

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    result = stack.http.get(f"/v1/jobs/{job_id}/result", headers=stack.headers())
    if stack.backend == "s3":
        assert result.status_code == 307
        result = httpx.get(result.headers["location"], timeout=10)
    api_bytes = result.content
    assert result.status_code == 200 and api_bytes[:4] == b"\x89PNG"
    assert Path(download.path()).read_bytes() == api_bytes
    assert download.suggested_filename == f"{job_id}.png"

    # Compare controls: keyboard moves the split, zoom enlarges the stage.
    page.focus("#viewport")
    page.keyboard.press("Shift+ArrowLeft")
    assert page.input_value("#split") == "40"
    page.fill("#zoom", "4")
    page.dispatch_event("#zoom", "input")
    width = page.locator("#stage").evaluate("el => el.getBoundingClientRect().width")
    viewport = page.locator("#viewport").evaluate("el => el.clientWidth")
    assert width > 3 * viewport
    page.fill("#zoom", "1")
    page.dispatch_event("#zoom", "input")

    # The recent list shows this job with a thumbnail; opening it shows the result again.
    expect(page.locator("#recent-source")).to_have_text("Your latest jobs on this server.")  # GET /v1/jobs
    item = page.locator("#recent li button", has_text="succeeded").first
    expect(item).to_be_visible()
    assert item.locator("img").evaluate("img => img.complete && img.naturalWidth") == 96
    # Another tab with the same key: the server's list, thumbnails drawn from the results, one reopens.
    other = open_page(clean)
    other.fill("#api_key", KEY)
    other.dispatch_event("#api_key", "change")
    entry = other.locator(f"#recent button[aria-label^='Job {job_id}']")
    expect(entry.locator("img")).to_be_visible()
    assert entry.locator("img").evaluate("img => img.complete && img.naturalWidth") == 96  # min(240, width)
    entry.click()
    expect(other.locator("#compare")).to_be_visible()
    assert other.locator("#compare").evaluate("el => el.classList.contains('after-only')")  # no input here
    assert other.locator("#after").evaluate("img => img.complete && img.naturalWidth") == 96
    assert other.get_attribute("#download", "download") == f"{job_id}.png"
    page.screenshot(path=artifact(f"page-tiny-preset-{stack.backend}.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 740})  # a phone: the result fits, no sideways scrolling
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.locator("#viewport").evaluate("el => el.getBoundingClientRect().right") <= 375
    page.screenshot(path=artifact(f"page-phone-result-{stack.backend}.png"), full_page=True)


@REDIS
def test_a_bad_file_shows_the_servers_message_next_to_the_image(stack: Stack, clean: Browser) -> None:
    bad = b"this is not an image at all" * 10
    expected = stack.submit(bad).json()
    assert expected["status"] in (415, 422), expected
    page = open_page(clean)
    page.fill("#api_key", KEY)
    choose_file(page, "broken.png", bad)
    page.click("#submit")
    error = page.locator("#image-error")
    playwright_api.expect(error).to_contain_text(expected["detail"])
    assert str(expected["status"]) in error.inner_text()
    assert page.get_attribute("#image", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "image"  # focus moved to the field at fault


@REDIS
def test_an_out_of_range_field_is_reported_next_to_that_field(clean: Browser) -> None:
    page = open_page(clean)
    page.fill("#api_key", KEY)
    choose_file(page, "photo.png", sample_png())
    page.click("summary")
    page.fill("#steps", "100000")
    page.click("#submit")
    playwright_api.expect(page.locator("#steps-error")).to_contain_text("100")
    assert page.locator("#form-error").inner_text() == ""


@REDIS
def test_a_wrong_api_key_is_reported_as_401_in_words(clean: Browser) -> None:
    page = open_page(clean)
    page.fill("#api_key", "not-a-key")
    choose_file(page, "photo.png", sample_png())
    page.click("#submit")
    error = page.locator("#api_key-error")
    playwright_api.expect(error).to_contain_text("401")
    text = error.inner_text()
    assert "API key" in text and "invalid" in text.lower(), text
    assert page.evaluate("sessionStorage.getItem('diffbir.apiKey')") == "not-a-key"


@REDIS
def test_phone_width_has_no_horizontal_scroll_and_keyboard_reaches_the_form(clean: Browser) -> None:
    page = open_page(clean, width=375, height=740)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.keyboard.press("Tab")  # skip link first
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    # after the two docs links: the API key field, then the image picker
    assert page.evaluate("document.activeElement.id") == "api_key"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "image"
    unlabeled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')]
             .filter(el => !el.labels?.length && !el.getAttribute('aria-labelledby')).map(el => el.id)"""
    )
    assert unlabeled == []
    page.screenshot(path=artifact("page-phone.png"), full_page=True)


@REDIS
@pytest.mark.parametrize(
    ("path", "ready"),
    [("/docs", ".swagger-ui .info .title"), ("/redoc", "[role=search], .api-content h1")],
)
def test_docs_render_from_local_assets(clean: Browser, path: str, ready: str) -> None:
    page = clean.page()
    page.goto(path)
    page.wait_for_selector(ready, timeout=30_000)
    assert "DiffBIR" in page.content()


@REDIS
@pytest.mark.parametrize(
    ("path", "ready"),
    [("/", "body[data-ready='1']"), ("/docs", ".swagger-ui .info"), ("/redoc", ".api-content")],
)
def test_first_load_page_weight(clean: Browser, path: str, ready: str) -> None:
    """Bytes on the wire for a cold first load (headers + bodies as Chromium reports them, no compression)."""
    page = clean.page()
    finished: list[Any] = []
    page.on("requestfinished", lambda request: finished.append(request))
    page.goto(path)
    page.wait_for_selector(ready, timeout=30_000)
    page.wait_for_load_state("networkidle")
    per_url = {}
    for request in finished:
        sizes = request.sizes()
        per_url[request.url] = sizes["responseBodySize"] + sizes["responseHeadersSize"]
    total = sum(per_url.values())
    report = {"path": path, "total_bytes": total, "requests": len(per_url), "per_url": per_url}
    name = "root" if path == "/" else path.strip("/")
    artifact(f"page-weight-{name}.json").write_text(json.dumps(report, indent=2))
    print(f"page weight, first load of {path}: {total} bytes in {len(per_url)} requests")
    assert all(size > 0 for size in per_url.values()), per_url
    if path == "/":
        assert any(url.endswith("/static/js/main.js") for url in per_url)
        assert total < 200_000, report  # plain modules and one stylesheet: small by design


def run_module(page: Any, module: str, body: str, arg: Any = None) -> Any:
    """Evaluate ``body`` (an async function body with ``m`` = the page module, ``arg``) in the browser."""
    script = f"async (arg) => {{ const m = await import('/static/js/{module}'); {body} }}"
    return page.evaluate(script, arg)


@REDIS
def test_event_stream_parser_reads_the_sse_wire_format(clean: Browser) -> None:
    page = open_page(clean)
    wire = (
        ": keep-alive\n\n"
        'id: 1\nevent: progress\ndata: {"status": "running",\ndata:  "progress": {"stage": "sampler"}}\n\n'
        "retry: 1000\r\n\r\n"  # no data: no message
        'data: {"status":"succeeded"}\r\n\r\n'
    )
    messages = run_module(
        page,
        "progress.js",
        """
        const bytes = new TextEncoder().encode(arg);
        const stream = new ReadableStream({ start(c) {            // split mid-line to test buffering
          for (let i = 0; i < bytes.length; i += 7) c.enqueue(bytes.slice(i, i + 7));
          c.close(); } });
        const out = [];
        for await (const msg of m.sseMessages(stream)) out.push([msg.event, msg.id, m.update(msg.data)]);
        return out;
        """,
        wire,
    )
    assert messages == [
        ["progress", "1", {"status": "running", "progress": {"stage": "sampler"}}],
        ["message", None, {"status": "succeeded", "progress": None}],
    ]
    bare = run_module(page, "progress.js", "return m.update(arg)", '{"stage": "vae", "step": 2, "total": 5}')
    assert bare["progress"] == {"stage": "vae", "step": 2, "total": 5}


@REDIS
def test_vocabulary_comes_from_the_schema_or_a_discovery_document(clean: Browser) -> None:
    page = open_page(clean)
    from_spec = run_module(
        page, "options.js", "return m.fromOpenAPI(await (await fetch('/openapi.json')).json())"
    )
    from common.params import SAMPLERS, TASKS, RestoreParams

    assert from_spec["task"]["choices"] == list(TASKS) and from_spec["sampler"]["choices"] == list(SAMPLERS)
    steps = RestoreParams.model_fields["steps"]
    assert from_spec["steps"]["default"] == steps.default
    assert (from_spec["steps"]["min"], from_spec["steps"]["max"]) == (1, 100)
    discovery = {
        "models": [
            {
                "version": "v2.1",
                "tasks": [{"name": "sr"}, {"name": "face"}],
                "samplers": ["edm_dpm++_3m_sde", "spaced"],
                "defaults": {"sampler": "edm_dpm++_3m_sde", "steps": 10},
                "limits": {"steps": {"min": 1, "max": 50}, "upscale": [1, 4]},
            }
        ]
    }
    merge = "return m.merge(m.fromModels(arg[0]), arg[1])"
    merged = run_module(page, "options.js", merge, [discovery, from_spec])
    assert merged["task"]["choices"] == ["sr", "face"]
    assert merged["sampler"]["default"] == "edm_dpm++_3m_sde" and merged["steps"]["max"] == 50
    assert merged["upscale"]["max"] == 4 and merged["fidelity"]["max"] == 1  # the schema fills the rest


@REDIS
def test_problems_land_next_to_their_field(clean: Browser) -> None:
    page = open_page(clean)
    fields = ["api_key", "image", "steps", "seed"]
    unauthorized = {"code": "unauthorized", "title": "Missing or invalid API key", "detail": "bad key"}
    cases = [
        (
            {"status": 422, "title": "Invalid", "errors": [{"loc": ["body", "steps"], "msg": "too big"}]},
            [["steps", "too big"]],
        ),
        ({"status": 401, **unauthorized}, [["api_key", "Missing or invalid API key (401): bad key"]]),
        (
            {"status": 415, "code": "unsupported_media_type", "title": "Unsupported", "detail": "gif"},
            [["image", "Unsupported (415): gif"]],
        ),
        (
            {"status": 429, "code": "queue_full", "title": "Too many queued jobs", "detail": "3 waiting"},
            [[None, "Too many queued jobs (429): 3 waiting"]],
        ),
    ]
    for problem, placed in cases:
        got = run_module(page, "problems.js", "return m.placeProblem(arg[0], arg[1])", [problem, fields])
        assert got == placed


@REDIS
def test_auth_off_hides_the_key_field_and_a_job_runs_without_one(open_api: str, clean: Browser) -> None:
    page = open_page(clean, base_url=open_api)
    assert page.get_attribute("html", "data-auth") == "off"
    assert not page.is_visible("#api_key")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "image"  # the hidden key field takes no focus
    choose_file(page, "photo.png", sample_png(24, 16))
    page.click("summary")
    page.fill("#steps", "2")
    page.click("#submit")
    page.wait_for_selector("#compare:not([hidden])", timeout=120_000)
    playwright_api.expect(page.locator("#status-text")).to_have_text("Done.")
    assert page.locator("#after").evaluate("img => img.naturalWidth") == 96  # the schema's default upscale 4
    playwright_api.expect(page.locator("#recent li")).to_have_count(1)


@REDIS
def test_form_follows_a_discovery_document_when_the_server_has_one(clean: Browser) -> None:
    """As GET /v1/models would answer (served here by the browser's router): its choices and defaults win."""
    page = clean.page()
    discovery = {  # the shape of service/discovery.py: limits and choices beside the models
        "source": "workers",
        "models": [
            {
                "version": "v2.1",
                "preset": "tiny",
                "tasks": ["sr", "face"],
                "samplers": {"edm_dpm++_3m_sde": ["s_noise"], "spaced": []},
                "defaults": {"sampler": "edm_dpm++_3m_sde", "steps": 10, "cfg_scale": 6, "seed": None},
            }
        ],
        "limits": {"steps": [1, 60], "upscale": [1, 8]},
        "choices": {"task": ["sr", "face", "denoise"], "color_fix": ["wavelet", "none"]},
    }
    page.route("**/v1/models", lambda route: route.fulfill(json=discovery))
    page.goto("/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.get_attribute("#restore-form", "data-options-source") == "models"
    assert page.locator("#task option").all_inner_texts() == ["sr", "face"]
    assert page.input_value("#sampler") == "edm_dpm++_3m_sde"
    assert (page.input_value("#steps"), page.get_attribute("#steps", "max")) == ("10", "60")
    assert page.input_value("#cfg_scale") == "6"
    assert page.get_attribute("#fidelity", "max") == "1"  # not in the document: from the schema
    colour_fixes = page.eval_on_selector_all("#color_fix option", "options => options.map(o => o.value)")
    assert colour_fixes == ["wavelet", "none"]  # from the document's choices
    assert page.input_value("#seed") == ""  # a null default stays unset
    note = page.locator("#model-note")
    playwright_api.expect(note).to_contain_text("tiny preset: random weights, NOT a restoration model")


@REDIS
def test_options_reloaded_by_a_new_key_leave_the_field_being_edited_alone(clean: Browser) -> None:
    """Entering a key reloads the options (GET /v1/models needs one); a field with focus keeps its text.

    The race it pins: CI saw ``fill("#steps", "2")`` give "502" when the reload's default landed between the
    fill's select-all and its typing. Here the same order is forced: select, reload, then type.
    """
    page = clean.page()
    discovery = {"models": [{"version": "v2.1", "tasks": ["sr"], "defaults": {"steps": 10, "cfg_scale": 6}}]}
    unauthorized = {"title": "Unauthorized", "status": 401, "detail": "no key", "code": "unauthorized"}

    def models(route: Any) -> None:
        if route.request.headers.get("authorization") == f"Bearer {KEY}":
            route.fulfill(json=discovery)
        else:
            route.fulfill(status=401, json=unauthorized, headers={"content-type": "application/problem+json"})

    page.route("**/v1/models", models)
    page.goto("/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.get_attribute("#restore-form", "data-options-source") == "openapi"  # 401: from the schema
    page.click("summary")
    page.focus("#steps")
    page.eval_on_selector("#steps", "el => el.select()")
    page.eval_on_selector(  # the key arrives without moving focus (as from a password manager)
        "#api_key", "(el, key) => { el.value = key; el.dispatchEvent(new Event('change')); }", KEY
    )
    page.wait_for_selector("#restore-form[data-options-source='models']")
    assert page.input_value("#cfg_scale") == "6"  # the reload did apply its defaults elsewhere
    page.keyboard.type("2")
    assert page.input_value("#steps") == "2"


@REDIS
@pytest.mark.parametrize("stream", ["complete", "broken"])
def test_progress_comes_from_the_event_stream_and_polling_takes_over_when_it_breaks(
    stack: Stack, clean: Browser, stream: str
) -> None:
    """GET /v1/jobs/{id}/events, as the router answers it here: the real job's states as SSE messages."""
    page = open_page(clean)

    def events(route: Any) -> None:
        job_id = route.request.url.rsplit("/", 2)[-2]
        assert route.request.headers.get("authorization") == f"Bearer {KEY}"  # fetch, not EventSource
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["status"] not in TERMINAL:
            doc = stack.job(job_id)
            if not frames or doc["progress"] != frames[-1]["progress"]:
                frames.append({"status": doc["status"], "progress": doc["progress"]})
            time.sleep(0.03)
        if stream == "broken":
            frames = frames[:-1]  # the connection drops before the terminal event
        messages = [f"id: {i}\ndata: {json.dumps(frame)}\n\n" for i, frame in enumerate(frames)]
        body = ": connected\n\n" + "".join(messages)
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    page.route("**/v1/jobs/*/events", events)
    page.fill("#api_key", KEY)
    choose_file(page, "photo.png", sample_png(24, 16))
    page.click("summary")
    page.fill("#steps", "6")
    page.fill("#upscale", "2")
    page.click("#submit")
    page.wait_for_selector("#compare:not([hidden])", timeout=120_000)
    playwright_api.expect(page.locator("#status-text")).to_have_text("Done.")
    via = page.get_attribute("#status-box", "data-via")
    assert via == ("events" if stream == "complete" else "polling")


@REDIS
def test_a_result_that_cannot_be_loaded_is_reported_as_such(clean: Browser) -> None:
    """The job succeeds but fetching its result fails (here the API's answer when object storage refuses)."""
    page = open_page(clean)
    refused = {
        "type": "urn:diffbir:problem:unavailable",
        "title": "A backing service is unavailable",
        "status": 503,
        "detail": "object storage refused the request",
        "code": "unavailable",
    }
    page.route(
        "**/v1/jobs/*/result",
        lambda route: route.fulfill(
            status=503, json=refused, headers={"content-type": "application/problem+json"}
        ),
    )
    page.fill("#api_key", KEY)
    choose_file(page, "photo.png", sample_png(24, 16))
    page.click("summary")
    page.fill("#steps", "2")
    page.click("#submit")
    error = page.locator("#job-error")
    playwright_api.expect(error).to_contain_text("succeeded; loading its result failed", timeout=120_000)
    assert "A backing service is unavailable (503): object storage refused the request" in error.inner_text()
    playwright_api.expect(page.locator("#status-text")).to_have_text(
        "Finished, but the result could not be loaded."
    )


@REDIS
def test_an_image_can_be_dropped_or_pasted(clean: Browser) -> None:
    page = open_page(clean)
    make_file = """([name, w, h]) => {
        const canvas = document.createElement('canvas'); canvas.width = w; canvas.height = h;
        return new Promise(ok => canvas.toBlob(b => { const t = new DataTransfer();
            t.items.add(new File([b], name, {type: 'image/png'})); ok(t); }, 'image/png'));
    }"""
    dropped = page.evaluate_handle(make_file, ["dropped.png", 30, 20])
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})
    playwright_api.expect(page.locator("#image-status")).to_contain_text("dropped.png: 30×20")
    pasted = page.evaluate_handle(make_file, ["pasted.png", 12, 34])
    page.evaluate(
        "t => document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: t, bubbles: true}))", pasted
    )
    playwright_api.expect(page.locator("#image-status")).to_contain_text("pasted.png: 12×34")
    assert page.is_visible("#preview")
