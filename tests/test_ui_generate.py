"""The page on a causal base (issue #34): /ui shows a Generate section when the version the server answers with is a
causal LM, streams a greedy chat answer from POST /v1/chat/completions into it, and hides the section for a masked
LM. Headless Chromium, as tests/test_ui.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from causal_models import chat_tokenizer, tiny_causal
from service_helpers import das_serve
from test_ui import _css, _wait, browser, driver  # noqa: F401 - the module's driver fixture

from das_settings import get_settings


@pytest.fixture(scope="module")
def causal_server(tmp_path_factory, legal_docs, code_docs) -> Iterator[str]:
    root = tmp_path_factory.mktemp("ui-causal")
    base = tiny_causal("llama", chat_tokenizer(legal_docs + code_docs), root / "llama")
    server, url = das_serve(root / "store", root / "work", get_settings().models_dir, log=root / "server.log",
                            extra_env={"DAS_BASE_MODEL": str(base)})
    try:
        yield url
    finally:
        server.terminate()
        server.wait(30)


@browser
def test_the_page_generates_on_a_causal_base(causal_server, driver: Any):  # noqa: F811 - the fixture
    from selenium.webdriver.common.by import By

    assert httpx.get(f"{causal_server}/v1/models/current").json()["kind"] == "causal"
    driver.get(f"{causal_server}/ui")
    _wait(driver, lambda d: d.find_element(By.ID, "generate").is_displayed(), "the Generate section")
    assert driver.find_element(By.ID, "generate-link").is_displayed()
    driver.find_element(By.ID, "generate-prompt").send_keys("the court dismissed")
    driver.find_element(By.CSS_SELECTOR, "#generate-body button[type=submit]").click()
    note = _wait(driver, lambda d: (lambda t: t if t.startswith("answered by") else None)(
        d.find_element(By.ID, "generate-note").text), "the answer's version")
    assert note.startswith("answered by v0001")
    shown = driver.execute_script("return document.getElementById('generate-out').textContent")
    expected = httpx.post(f"{causal_server}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "the court dismissed"}], "max_tokens": 64, "temperature": 0,
    }).json()["choices"][0]["message"]["content"]
    assert shown == expected and shown.strip()  # the streamed text is the API's greedy answer, character for character
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@browser
def test_the_page_hides_generation_on_a_masked_base(tmp_path: Path, driver: Any):  # noqa: F811 - the fixture
    from selenium.webdriver.common.by import By

    server, url = das_serve(tmp_path / "store", tmp_path / "work", get_settings().models_dir)
    try:
        assert httpx.get(f"{url}/v1/models/current").json()["kind"] == "masked"
        driver.get(f"{url}/ui")
        _wait(driver, lambda d: _css(d, "#versions-body table, #versions-body ul, #versions-body li"),
              "the versions")
        assert not driver.find_element(By.ID, "generate").is_displayed()
        assert not driver.find_element(By.ID, "generate-link").is_displayed()
    finally:
        server.terminate()
        server.wait(30)
