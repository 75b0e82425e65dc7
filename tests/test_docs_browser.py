"""/docs and /redoc render in a real browser with no network: every asset comes from the app.

Headless Chromium (Debian's ``chromium`` package) loads the pages from a real uvicorn server
with every host name but 127.0.0.1 made unresolvable, so a page that needed a CDN would not
render. Machines without the browser (CI starts without one) get it installed here with
``apt-get``, which needs root and Debian's package index.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urljoin, urlparse

import pytest
from fastapi import Security
from fastapi.security import APIKeyHeader

from service.app import create_app
from service.examples import PATH_PARAMETERS
from service.settings import Settings
from tests.browser import Browser, Page
from tests.servers import uvicorn_thread

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
OFFLINE = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # No network but this machine: any request to another host fails to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
FLAGS = [*OFFLINE, "--virtual-time-budget=10000"]
"""For ``--dump-dom``: the page's scripts run for up to 10 s of virtual time first."""
# The shape of the key-protected routes to come, to show "Authorize" renders with the docs.
ApiKey = Annotated[str | None, Security(APIKeyHeader(name="X-API-Key", auto_error=False))]
ASSET_TAGS = {"script": "src", "link": "href", "img": "src", "iframe": "src", "source": "src"}


class Dom(HTMLParser):
    """What a test needs of a page: asset URLs, elements' attributes, and the text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.assets: list[str] = []
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        link = attributes.get(ASSET_TAGS.get(tag, ""), "")
        if link and not link.startswith("data:"):
            self.assets.append(link)

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def with_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.elements if name in a.get("class", "").split()]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            check=True,
            capture_output=True,
            timeout=1200,
            env=env,
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = create_app(Settings())

    @app.get("/test/secured", summary="A key-protected operation", tags=["test"])
    def secured(key: ApiKey) -> dict[str, bool]:
        """Answers whether a key was sent."""
        return {"key": key is not None}

    with uvicorn_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    driven = Browser(chromium, OFFLINE, tmp_path_factory.mktemp("profile"))
    yield driven
    driven.close()


def render(chromium: Path, url: str, profile: Path) -> Dom:
    profile.mkdir()
    result = subprocess.run(
        [str(chromium), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0 and result.stdout, result.stderr[-2000:]
    return Dom(result.stdout)


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status), response.read()


def openapi(server: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(fetch(f"{server}/openapi.json")[1])
    return schema


def assert_assets_are_served_locally(server: str, page_url: str, assets: list[str]) -> None:
    origin = urlparse(server).netloc
    for asset in assets:
        url = urljoin(page_url, asset)
        assert urlparse(url).netloc == origin, f"{asset} is not served by the app"
        status, body = fetch(url)
        assert status == 200 and body, url


def test_swagger_ui_renders_every_operation_with_its_examples(
    chromium: Path, server: str, tmp_path: Path
) -> None:
    schema = openapi(server)
    assert schema["openapi"].startswith("3.1")
    served = Dom(fetch(f"{server}/docs")[1].decode())
    assert served.assets, "the page references its script and stylesheet"
    assert_assets_are_served_locally(server, f"{server}/docs", served.assets)

    # Deep link: the conv-shape operation opens, with its request examples.
    page = render(
        chromium, f"{server}/docs#/shapes/shapes_conv_v1_shapes_conv_post", tmp_path / "p"
    )
    assert_assets_are_served_locally(server, f"{server}/docs", page.assets)
    rendered = {(a["data-path"]) for a in page.with_class("opblock-summary-path")}
    assert rendered == set(schema["paths"])  # Swagger UI 4 renders none of an OpenAPI 3.1
    options = {a.get("value") for tag, a in page.elements if tag == "option"}
    examples = schema["paths"]["/v1/shapes/conv"]["post"]["requestBody"]["content"]
    assert set(examples["application/json"]["examples"]) <= options
    text = "".join(page.text)
    assert "Seed 1.1(a): 21x12 input, 4x5 kernel, stride 4" in text
    assert page.with_class("authorize"), "the Authorize button for X-API-Key"


def test_redoc_renders_every_operation_and_its_named_examples(
    chromium: Path, server: str, tmp_path: Path
) -> None:
    schema = openapi(server)
    served = Dom(fetch(f"{server}/redoc")[1].decode())
    assert served.assets
    assert_assets_are_served_locally(server, f"{server}/redoc", served.assets)

    page = render(chromium, f"{server}/redoc", tmp_path / "p")
    assert_assets_are_served_locally(server, f"{server}/redoc", page.assets)
    sections = {a.get("data-section-id") for _, a in page.elements}
    text = "".join(page.text)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            assert f"operation/{operation['operationId']}" in sections, path
            content = operation.get("requestBody", {}).get("content", {})
            examples = content.get("application/json", {}).get("examples", {})
            if len(examples) > 1:  # ReDoc names examples in a menu; a lone one is just shown
                for example in examples.values():
                    assert example["summary"] in text, (path, example["summary"])


def execute_unchanged(page: Page, block: str) -> tuple[str, str]:
    """Open an operation of Swagger UI, press "Try it out", then Execute with nothing
    changed: the request's URL and the status answered, as the page shows them."""
    found = f"document.getElementById({json.dumps(block)})"
    for button in ("button.opblock-summary-control", ".try-out__btn", "button.execute"):
        page.wait_for(f"!!{found}?.querySelector({json.dumps(button)})")
        page.evaluate(f"{found}.querySelector({json.dumps(button)}).click()")
    status = page.wait_for(
        f"{found}.querySelector('.live-responses-table tr.response .response-col_status')"
        "?.innerText"
    )
    url = page.evaluate(f"{found}.querySelector('.request-url pre')?.innerText")
    return str(url), str(status).strip()


def test_try_it_out_then_execute_sends_the_first_example_where_it_belongs(
    browser: Browser, server: str
) -> None:
    # Swagger UI sends the body example shown first to the path its fields hold: the model
    # and the problem its parameters pre-fill must be the ones that example is for.
    schema = openapi(server)
    page = browser.open(f"{server}/docs")
    page.wait_for("document.querySelectorAll('.opblock').length")
    tried = []
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            examples = content.get("application/json", {}).get("examples", {})
            first = next(iter(examples.values()), {})
            if PATH_PARAMETERS not in first:
                continue
            block = f"operations-{operation['tags'][0]}-{operation['operationId']}"
            url, status = execute_unchanged(page, block)
            for value in first[PATH_PARAMETERS].values():
                assert f"/{value}/" in urlparse(url).path, (path, url)
            assert status == "200", (path, url, status)
            tried.append(path)
    assert len(tried) == 5, tried  # the four model routes and the check of an answer


RENDERED = {
    "/docs": "document.querySelectorAll('.opblock').length",
    "/redoc": "document.querySelectorAll('[data-section-id]').length",
}
"""A script that is truthy once the page has rendered the operations."""


def left_the_origin(page: Page, origin: str) -> list[str]:
    """The URLs of every request the tab made to another host than ``origin`` and the
    browser did not refuse before sending (a Content-Security-Policy's ``blockedReason``)."""
    refused = {
        failed["requestId"]
        for failed in page.received("Network.loadingFailed")
        if failed.get("blockedReason") == "csp"
    }
    left = []
    for sent in page.received("Network.requestWillBeSent"):
        url = urlparse(sent["request"]["url"].removeprefix("blob:"))
        if url.scheme == "data" or sent["requestId"] in refused:
            continue  # held in the page itself, or never sent
        if url.netloc != origin:
            left.append(sent["request"]["url"])
    return left


@pytest.mark.parametrize("path", list(RENDERED))
def test_the_page_makes_no_request_to_another_host(
    browser: Browser, server: str, path: str
) -> None:
    # Every request the browser makes, its bundles' own included (ReDoc's sidebar asks
    # cdn.redoc.ly for Redocly's logo), not only the assets the page's HTML names.
    page = browser.open(f"{server}{path}")
    page.wait_for(RENDERED[path])
    page.settle()
    sent = [r["request"]["url"] for r in page.received("Network.requestWillBeSent")]
    assert f"{server}/openapi.json" in sent, sent  # the recording sees the page's requests
    assert left_the_origin(page, urlparse(server).netloc) == []
