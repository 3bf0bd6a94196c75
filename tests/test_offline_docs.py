"""/docs (Swagger UI) and /redoc (ReDoc) work without internet (api/offline_docs.py): their scripts, style sheet and
icon come from the server, not a CDN. Read over HTTP, then rendered in headless Chromium (Debian's `chromium` +
`chromium-driver`, as tests/test_ui.py drives them) with every host but the server cut off, against a real
`das serve` with tokens on (the docs pages stay open)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_client import running_server
from test_ui import CHROMEDRIVER, CHROMIUM, browser

ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".ico": "image/png"}
CDN_FILE = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"  # where FastAPI's own /docs loads it


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("offline-docs")) as url:
        yield url


def _referenced(html: str) -> list[str]:
    """The URLs a page loads: every src and href."""
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_files_of_the_server(server, page):
    with httpx.Client(base_url=server, timeout=30) as http:  # no token: the docs pages are open
        answer = http.get(page)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        outside = [u for u in re.findall(r"https?://[^\s\"'<>)]+", answer.text) if not u.startswith(server)]
        assert outside == [], f"{page} loads from elsewhere: {outside}"
        loaded = _referenced(answer.text)
        assert "/favicon.ico" in loaded and any(u.endswith(".js") for u in loaded), loaded
        for url in loaded:
            asset = http.get(url)
            kind = ASSET_TYPES[url[url.rindex("."):]]
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), (url, asset.headers)
            assert "max-age" in asset.headers["cache-control"] and len(asset.content) > 1000, url
            # cached: a revalidation by ETag gets 304 and no body; HEAD gets the headers alone
            again = http.get(url, headers={"If-None-Match": asset.headers["etag"]})
            assert (again.status_code, again.content) == (304, b""), url
            head = http.head(url)
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(len(asset.content))
        assert http.head(page).status_code == 200
        assert http.get("/openapi.json").json()["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_the_favicon_and_an_unknown_file(server):
    with httpx.Client(base_url=server, timeout=30) as http:
        icon = http.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
        assert icon.content.startswith(b"\x89PNG")
        missing = http.get("/docs-assets/swagger-ui.js")
        assert missing.status_code == 404 and "swagger-ui-bundle.js" in missing.json()["detail"]


# -------------------------------------------------------------------------------- in a browser with no network
@pytest.fixture(scope="module")
def offline_driver() -> Iterator[Any]:
    """Headless Chromium that reaches 127.0.0.1 only: every other name fails to resolve, and every other request
    goes to a proxy on a closed port; the browser's console is kept for the test to read."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1', "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def _until(driver: Any, check, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 60, poll_frequency=0.2).until(check, f"the page never showed {what}")


def _fetch(driver: Any, url: str) -> str:
    """What fetching `url` from the page gives: 'STATUS CONTENT-TYPE', or the error."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {mode: 'no-cors'}).then((r) => done(`${r.status} ${r.headers.get('content-type')}`),"
        " (e) => done(String(e)));", url)


def _console_errors(driver: Any) -> list[str]:
    """The console's errors since the last call (a failed request is one: "Failed to load resource ...")."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@browser
def test_swagger_ui_and_redoc_render_the_operations_with_the_network_cut(server, offline_driver):
    from selenium.webdriver.common.by import By

    driver = offline_driver
    driver.get(f"{server}/docs")
    # the network is really cut: the file FastAPI's own page would load cannot be fetched from this page
    assert "Failed to fetch" in _fetch(driver, CDN_FILE)
    driver.get_log("browser")  # that refused fetch is the test's own: not counted below

    driver.get(f"{server}/docs")
    path = '.opblock-post .opblock-summary-path[data-path="/v1/fill-mask"]'
    operation = _until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, path), "POST /v1/fill-mask")[0]
    assert operation.is_displayed()
    assert len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) > 20  # every route, not just one
    assert driver.find_elements(By.CSS_SELECTOR, "button.authorize"), "the bearer token's Authorize button"
    assert driver.execute_script("return getComputedStyle(document.querySelector('.opblock-post'))"
                                 ".backgroundColor") != "rgba(0, 0, 0, 0)", "the style sheet is applied"
    assert _console_errors(driver) == []
    icon = driver.execute_script("return document.querySelector('link[rel~=icon]').href")
    assert _fetch(driver, icon) == "200 image/png"

    driver.get(f"{server}/redoc")
    title = _until(driver, lambda d: [h for h in d.find_elements(By.CSS_SELECTOR, "h2") if h.text == "Fill Mask"],
                   "the Fill Mask operation")[0]
    assert title.is_displayed()
    assert _console_errors(driver) == []

    # /ui names no icon: a browser asks for /favicon.ico (headless Chromium asks for none, so the page fetches it)
    driver.get(f"{server}/ui")
    _until(driver, lambda d: d.find_elements(By.ID, "token"), "the /ui page")
    assert _fetch(driver, "/favicon.ico") == "200 image/png"
