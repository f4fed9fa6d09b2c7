"""The page and the docs pages as HTTP answers: served from the package, same-origin only (CSP), offline."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.service.conftest import ClientFactory


class _Links(HTMLParser):
    """Every URL an HTML document would load (scripts, styles, icons, images)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name) and (tag in ("script", "img") or values.get("rel") in ("stylesheet", "icon")):
                self.urls.append(str(values[name]))


def _loaded_urls(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc"])
def test_html_pages_load_only_same_origin_assets(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200, resp.text
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "http" not in csp, csp
    urls = _loaded_urls(resp.text)
    assert urls, "the page loads its assets from somewhere"
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert client.get(url).status_code == 200, url  # every asset is really served
    assert "cdn.jsdelivr" not in resp.text and "fonts.googleapis" not in resp.text


def test_page_modules_are_served_and_import_only_each_other(client: TestClient) -> None:
    main = client.get("/static/js/main.js")
    assert main.status_code == 200
    assert main.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    seen, todo = set(), ["main.js"]
    while todo:
        name = todo.pop()
        seen.add(name)
        source = client.get(f"/static/js/{name}").text
        for target in re.findall(r'from\s+"([^"]+)"', source):
            assert target.startswith("./"), f"{name} imports {target}"
            if target[2:] not in seen:
                todo.append(target[2:])
    assert {"api.js", "options.js", "progress.js", "compare.js", "recent.js", "problems.js"} <= seen


def test_page_says_whether_auth_is_on(make_client: ClientFactory) -> None:
    assert 'data-auth="off"' in make_client().get("/").text
    assert 'data-auth="on"' in make_client(api_keys=["k1"]).get("/").text


def test_docs_and_page_stay_out_of_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/docs", "/redoc"} & set(paths)


def test_csp_allows_the_object_store_that_serves_results(make_client: ClientFactory, s3_env: dict) -> None:
    csp = make_client().get("/").headers["content-security-policy"]
    origin = s3_env["DIFFBIR_S3_ENDPOINT_URL"]  # moto, where presigned result URLs point
    assert f"connect-src 'self' {origin};" in csp and f"img-src 'self' blob: data: {origin};" in csp


def test_readme_screenshot_is_a_real_capture() -> None:
    """docs/img/page.png (copied from the browser test's artifact) is a picture of the page, not a stub."""
    shot = Path(__file__).resolve().parents[2] / "docs" / "img" / "page.png"
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.width >= 800 and img.height >= 500
        assert sum(1 for count in img.convert("L").histogram() if count) > 50


def test_served_docs_bundles_name_no_remote_asset(client: TestClient) -> None:
    redoc = client.get("/docs-assets/redoc.standalone.js")
    assert redoc.status_code == 200 and len(redoc.content) > 500_000
    assert "cdn.redoc.ly" not in redoc.text
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/docs-assets/{name}").status_code == 200


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_colours_meet_wcag_aa_contrast(client: TestClient, scheme: str) -> None:
    css = client.get("/static/page.css").text
    blocks = re.findall(r"\{([^{}]*--bg:[^{}]*)\}", css)  # :root, then the dark-scheme :root
    palette = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", blocks[0 if scheme == "light" else 1]))
    pairs = [
        ("fg", "bg"), ("fg", "panel"), ("muted", "panel"), ("muted", "bg"), ("accent", "bg"),
        ("accent", "panel"), ("accent-fg", "accent"), ("error", "panel"), ("error", "bg"),
    ]  # fmt: skip
    for text, background in pairs:
        ratio = _contrast(palette[text], palette[background])
        assert ratio >= 4.5, f"{scheme}: --{text} on --{background} is {ratio:.2f}:1"
