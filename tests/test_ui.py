"""The /ui page in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium,
against a real `das serve` (embedded mode, tokens on) holding four accepted versions (one of them rolled back, off the
active lineage), one the forgetting gate rejected, two end tasks and a running adaptation job. The test reads what
the page renders, and what the browser's console logged.

Screenshots go to the test's tmp folder; with UI_SCREENSHOTS_DIR set (say, docs/img) they are written there too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from task_sets import source_task, topic_task, write_jsonl
from test_client import INFER, MGMT, running_server
from test_endtasks_service import FORGETFUL, HARMLESS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None

browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and selenium),
    reason="the /ui browser test needs Debian's chromium and chromium-driver (apt-get install -y chromium "
           "chromium-driver; .ci/run installs them) and selenium (the dev extra); "
           f"found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}, selenium={'yes' if selenium else 'no'}")

SMALL = {"batch_size": "4", "max_length": "64"}
LONG = {"steps": "100000", "batch_size": "2", "max_length": "32", "checkpoint_every": "0", "log_every": "1"}


# -------------------------------------------------------------------------------- the history the page shows
def _api(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {MGMT}"}, timeout=60)


def _until(check: Callable[[], Any], what: str, timeout_s: float = 240.0) -> Any:
    """Poll until `check` returns something true; the deadline is a guard, not a measurement."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _job_done(api: httpx.Client, job_id: str) -> dict:
    return _until(lambda: (j := api.get(f"/v1/jobs/{job_id}").json())["state"] in
                  ("succeeded", "failed", "cancelled", "rejected") and j, f"job {job_id}")


def _register(api: httpx.Client, folder: Path, name: str, sets: dict) -> str:
    train = write_jsonl(folder / f"{name}-train.jsonl", sets["train"])
    evals = write_jsonl(folder / f"{name}-eval.jsonl", sets["eval"])
    with open(train, "rb") as t, open(evals, "rb") as e:
        answer = api.post("/v1/tasks", data={"name": name}, files={"train": (train.name, t), "eval": (evals.name, e)})
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def _upload(api: httpx.Client, path: Path, domain: str, form: dict) -> str:
    with open(path, "rb") as f:
        answer = api.post("/v1/corpora", files={"file": (path.name, f, "text/plain")},
                          data={"domain": domain, **SMALL, **form})
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


RETRAINED = {**HARMLESS, "lr": "0.00002"}  # v0005: v0004's corpus again, at another learning rate


def build_history(url: str, folder: Path, legal_docs: list[str], code_docs: list[str]) -> str:
    """v0001 (base), v0002 (legal), v0003 (legal, rejected by the gate), v0004 (code, accepted, then rolled back to
    v0002), v0005 (code from v0002, active), two tasks fitted on v0001, and a long adaptation running; returns that
    job's id."""
    legal, code = folder / "legal-notes.txt", folder / "python-docs.txt"
    legal.write_text("\n".join(legal_docs[:60]) + "\n", encoding="utf-8")
    code.write_text("\n".join(code_docs[:60]) + "\n", encoding="utf-8")
    with _api(url) as api:
        for job_id in [_register(api, folder, "source", source_task()), _register(api, folder, "topic", topic_task())]:
            assert _job_done(api, job_id)["state"] == "succeeded"
        assert _job_done(api, _upload(api, legal, "legal", HARMLESS))["version"] == "v0002"
        rejected = _job_done(api, _upload(api, legal, "legal", FORGETFUL))
        assert (rejected["state"], rejected["version"]) == ("rejected", "v0003"), rejected
        assert _job_done(api, _upload(api, code, "code", HARMLESS))["version"] == "v0004"
        rollback = api.post("/v1/models/v0002/activate")
        assert rollback.status_code == 200, rollback.text
        for job_id in rollback.json()["fit_jobs"]:
            assert _job_done(api, job_id)["state"] == "succeeded"
        retrained = _job_done(api, _upload(api, code, "code", RETRAINED))
        assert (retrained["parent"], retrained["version"]) == ("v0002", "v0005"), retrained
        assert api.put("/v1/aliases/staging", json={"version": "v0002"}).status_code == 200
        running = _upload(api, legal, "contracts", LONG)
        _until(lambda: (api.get(f"/v1/jobs/{running}").json()["progress"].get("step") or 0) > 0, "a running job")
    return running


# -------------------------------------------------------------------------------- the server and the browser
@pytest.fixture(scope="module")
def history(tmp_path_factory, legal_docs, code_docs) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("ui-server")
    with running_server(root) as url:
        running = build_history(url, root, legal_docs, code_docs)
        try:
            yield url, running
        finally:
            with _api(url) as api:
                api.delete(f"/v1/jobs/{running}")
                _job_done(api, running)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read by the tests
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def _screenshot(element: Any, name: str, folder: Path) -> None:
    element.screenshot(str(folder / name))
    if os.environ.get("UI_SCREENSHOTS_DIR"):
        target = Path(os.environ["UI_SCREENSHOTS_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        element.screenshot(str(target / name))


def _wait(driver: Any, check: Callable[[Any], Any], what: str, timeout_s: float = 60.0) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the jobs table is redrawn every second while a job runs: an element read mid-redraw is read again
    return WebDriverWait(driver, timeout_s, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(check, f"the page never showed {what}")


def _click(driver: Any, selector: str) -> None:
    """Click the element the selector finds, found again when a redraw replaced it before the click."""
    def clicked(d: Any) -> bool:
        found = _css(d, selector)
        if found and found[0].is_enabled():
            found[0].click()
            return True
        return False

    _wait(driver, clicked, f"a clickable {selector}")


def _css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _units(url: str, version: str) -> dict:
    with _api(url) as api:
        return api.get(f"/v1/models/{version}/importance", params={"units": "true"}).json()["units"]


def _crossed(a: list[list[float]], b: list[list[float]]) -> int:
    return sum(x <= 0.5 < y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


# the boxes the browser laid out: each pair of a point's value label and an axis tick label, a mark or another
# point's label that intersect (by at least half a pixel each way)
OVERLAPS = """
const chart = arguments[0];
const rect = (e) => e.getBoundingClientRect();
const hit = (a, b) => a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5
  && b.top < a.bottom - 0.5;
const name = (e) => (e.closest('.point') ? e.closest('.point').dataset.version + ' ' : '') + e.getAttribute('class')
  + ' "' + e.textContent + '"';
const labels = [...chart.querySelectorAll('.point-label')];
const others = [...chart.querySelectorAll('.tick-label, .point circle, .point path:not(.halo)')];
const found = [];
labels.forEach((label, i) => {
  for (const other of others) {
    if (other.closest('.point') !== label.closest('.point') && hit(rect(label), rect(other))) {
      found.push(name(label) + ' on ' + name(other));
    }
  }
  labels.slice(i + 1).forEach((next) => {
    if (hit(rect(label), rect(next))) found.push(name(label) + ' on ' + name(next));
  });
});
return found;
"""


def _console(driver: Any) -> list[dict]:
    """What the page's console logged since the last call (the browser log, goog:loggingPrefs)."""
    return driver.get_log("browser")


def _failed_loads(entries: list[dict]) -> list[str]:
    return [e["message"] for e in entries if e["level"] == "SEVERE" or "Failed to load resource" in e["message"]]


# -------------------------------------------------------------------------------- the page, read in the browser
@browser
def test_the_page_shows_versions_importance_tasks_and_jobs(history, driver, tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    url, running = history
    driver.set_window_size(1280, 800)
    _console(driver)  # what an earlier page logged
    driver.get(f"{url}/ui")
    # no token yet: the API answers 401 and the page says what to do
    _wait(driver, lambda d: "paste the inference or management token" in d.find_element("id", "versions-body").text,
          "the missing-token hint")
    _wait(driver, lambda d: "updated" in d.find_element("id", "status").text, "the first load's end")
    refused = _failed_loads(_console(driver))
    assert refused and all("401" in m for m in refused), refused  # 401s only: no 404 (no favicon, no evaluations)
    token = driver.find_element("id", "token")
    token.send_keys(INFER, Keys.ENTER)  # the form, as a keyboard user submits it
    assert driver.execute_script("return sessionStorage.getItem('das-ui-token')") == INFER

    # versions: the lineage tree with every version, the active one selected with its gate decision
    nodes = _wait(driver, lambda d: len(_css(d, ".version-node")) == 5 and _css(d, ".version-node"), "five versions")
    assert [n.get_attribute("data-version") for n in nodes] == ["v0001", "v0002", "v0003", "v0004", "v0005"]
    by_id = {n.get_attribute("data-version"): n for n in nodes}
    assert "active" in by_id["v0005"].text and "@staging" in by_id["v0002"].text
    # the rolled-back v0004 passed its gate: marked off the lineage, not like the rejected v0003
    assert by_id["v0003"].get_attribute("data-place") == "rejected" and "✕ rejected" in by_id["v0003"].text
    assert "off the active lineage" not in by_id["v0003"].text
    assert by_id["v0004"].get_attribute("data-place") == "branch" and "✕" not in by_id["v0004"].text
    assert "◌ retired" in by_id["v0004"].text and "gate accepted" in by_id["v0004"].text
    assert "◇ off the active lineage" in by_id["v0004"].text
    assert {by_id[v].get_attribute("data-place") for v in ("v0001", "v0002", "v0005")} == {"lineage"}
    legend = _css(driver, "#versions .legend-words")[0].text
    assert "✕ rejected: rejected by the forgetting gate" in legend and "◇ off the active lineage: accepted" in legend
    detail = _css(driver, ".version-detail")[0]
    assert detail.get_attribute("data-version") == "v0005"
    assert {r.get_attribute("data-task") for r in _css(driver, ".gate-table tbody tr")} == {"source", "topic"}
    assert "python-docs.txt, 60 documents" in detail.text and "final loss" in detail.text

    # the selected version's training-loss curve: a point per logged step of its run, axes with ticks, a label
    with _api(url) as api:
        logged = api.get("/v1/models/v0005/training").json()["history"]
    curve = _wait(driver, lambda d: (f := _css(d, '.training-figure[data-version="v0005"]')) and f[0], "the curve")
    assert len(curve.find_elements("css selector", '.loss-point[data-series="loss"]')) == len(logged) >= 2
    assert [int(p.get_attribute("data-step")) for p in curve.find_elements(
        "css selector", '.loss-point[data-series="loss"]')] == [h["step"] for h in logged]
    assert curve.find_elements("css selector", ".loss-line") and len(curve.find_elements("css selector",
                                                                                        ".tick-label")) >= 4
    assert "training loss per logged step" in curve.find_element("css selector", "svg").get_attribute("aria-label")

    # settings side by side: v0005 against its parent v0002 by default; the learning rate differs, in words
    compare = _wait(driver, lambda d: (r := _css(d, '#settings-compare tr[data-setting="lr"]')) and r[0], "lr's row")
    assert Select(driver.find_element("id", "compare-a")).first_selected_option.get_attribute("value") == "v0002"
    assert Select(driver.find_element("id", "compare-b")).first_selected_option.get_attribute("value") == "v0005"
    assert compare.get_attribute("data-differs") == "yes" and "≠ differs" in compare.text
    assert "1e-05" in compare.text or "0.000010" in compare.text
    same = _css(driver, '#settings-compare tr[data-setting="max_length"]')[0]
    assert same.get_attribute("data-differs") == "no" and "= same" in same.text
    Select(driver.find_element("id", "compare-a")).select_by_value("v0003")  # the rejected run: other steps too
    _wait(driver, lambda d: _css(d, '#settings-compare tr[data-setting="steps"]')[0].get_attribute("data-differs")
          == "yes", "steps differing between v0003 and v0005")
    assert "differ between v0003 and v0005" in driver.find_element("id", "compare-summary").text

    # importance: the diff opens on the selected version against its parent, not on a version against itself
    diff = _wait(driver, lambda d: (f := _css(d, ".diff-heatmap")) and f[0], "the diff")
    assert (diff.get_attribute("data-a"), diff.get_attribute("data-b")) == ("v0002", "v0005")

    # keyboard: Tab reaches the rejected version's node, Enter selects it, and its gate says rejected per task
    body = driver.find_element("tag name", "body")
    body.click()
    for _ in range(60):
        body = driver.switch_to.active_element
        if body.get_attribute("data-version") == "v0003" and "version-node" in body.get_attribute("class"):
            break
        body.send_keys(Keys.TAB)
    else:
        raise AssertionError("Tab never reached v0003's node")
    body.send_keys(Keys.ENTER)
    _wait(driver, lambda d: _css(d, ".version-detail")[0].get_attribute("data-version") == "v0003", "v0003's detail")
    rows = _css(driver, ".gate-table tbody tr")
    assert {r.get_attribute("data-task"): r.get_attribute("class") for r in rows} == {"source": "rejected",
                                                                                      "topic": "rejected"}
    assert all("✕ rejected" in r.text and "v0002" in r.text for r in rows)
    assert "Forgetting gate: rejected" in _css(driver, ".version-detail")[0].text
    _wait(driver, lambda d: _css(d, '.training-figure[data-version="v0003"]'), "v0003's curve")
    _screenshot(driver.find_element("id", "versions"), "ui-versions.png", tmp_path)

    # importance: a heatmap per adapted version, a cell per head or neuron of each layer, one shared scale
    figures = _wait(driver, lambda d: len(_css(d, ".version-heatmap")) == 4 and _css(d, ".version-heatmap"),
                    "four heatmaps")
    assert [f.get_attribute("data-version") for f in figures] == ["v0002", "v0003", "v0004", "v0005"]
    units = _units(url, "v0002")["cumulative"]
    for figure in figures:
        for panel in figure.find_elements("css selector", ".panel"):
            layers, per_layer = len(units[panel.get_attribute("data-group")]), len(units[panel.get_attribute(
                "data-group")][0])
            assert (int(panel.get_attribute("data-layers")), int(panel.get_attribute("data-units"))) == (layers,
                                                                                                         per_layer)
            assert len(panel.find_elements("css selector", "rect.cell")) == layers * per_layer
    assert len(_css(driver, "#importance-body > svg.legend")) == 1  # one scale, labelled, for every version
    assert "0.00" in _css(driver, "#importance-body > svg.legend")[0].text

    # the diff followed the selection: which units v0003 claimed over its parent v0002
    diff = _wait(driver, lambda d: (f := _css(d, ".diff-heatmap")) and f[0].get_attribute("data-b") == "v0003"
                 and f[0], "the diff v0002 -> v0003")
    assert diff.get_attribute("data-a") == "v0002"
    a, b = _units(url, "v0002")["cumulative"], _units(url, "v0003")["cumulative"]
    claimed = {r.find_element("tag name", "th").text: int(r.find_elements("tag name", "td")[0].text)
               for r in _css(driver, "#importance-diff tbody tr")}
    assert claimed == {g: _crossed(a[g], b[g]) for g in ("head", "intermediate", "output")}
    assert len(diff.find_elements("css selector", "rect.cell")) == sum(len(m) * len(m[0]) for m in a.values())
    _screenshot(driver.find_element("id", "importance-diff"), "ui-importance-diff.png", tmp_path)
    # v0002's parent is the base model, which has no importance: the page says so and shows a child against it
    _click(driver, '.version-node[data-version="v0002"]')
    note = _wait(driver, lambda d: (n := _css(d, "#importance-diff .diff-note")) and n[0], "the note")
    assert "parent v0001 is the base model" in note.text and "nothing to compare v0002 with" in note.text
    diff = _wait(driver, lambda d: (f := _css(d, ".diff-heatmap")) and f[0].get_attribute("data-a") == "v0002"
                 and f[0], "the diff from v0002")
    assert diff.get_attribute("data-b") == "v0005"  # its child on the active lineage

    # end tasks: both tasks, a score per version; the line runs through the active lineage only, the rolled-back
    # v0004 hangs off its fork as a dashed branch, the rejected v0003 is a cross without a line
    tasks = _css(driver, "article.task")
    assert [t.get_attribute("data-task") for t in tasks] == ["source", "topic"]
    for task in tasks:
        places = {p.get_attribute("data-version"): p.get_attribute("data-place")
                  for p in task.find_elements("css selector", ".point")}
        assert places == {"v0001": "lineage", "v0002": "lineage", "v0003": "rejected", "v0004": "branch",
                          "v0005": "lineage"}
        assert task.find_elements("css selector", '.point[data-version="v0003"] .cross')
        assert task.find_elements("css selector", '.point[data-version="v0004"] .diamond')
        assert task.find_element("css selector", ".score-line").get_attribute("data-versions") == "v0001 v0002 v0005"
        branches = [(b.get_attribute("data-from"), b.get_attribute("data-to"))
                    for b in task.find_elements("css selector", ".branch-line")]
        assert branches == [("v0002", "v0004")]
        assert task.find_elements("css selector", ".band") and "reference" in task.text
        assert "rejected by the forgetting gate" in task.find_element("css selector", ".chart-legend").text
        # no value label sits on an axis tick label, a mark or another value label
        chart = task.find_element("css selector", "svg.task-chart")
        assert len(chart.find_elements("css selector", ".point-label")) == 5
        assert driver.execute_script(OVERLAPS, chart) == []
    texts = driver.find_element("id", "predict-texts")
    texts.send_keys("Permission is hereby granted, free of charge, to any person obtaining a copy")
    driver.find_element("css selector", "form.predict button[type=submit]").click()
    answer = _wait(driver, lambda d: (t := _css(d, "#predict-out table")) and t[0], "a prediction")
    assert "answered by v0005" in answer.text
    assert answer.find_elements("css selector", "tbody td")[1].text in {"code", "licence"}

    # jobs: a fit says which task on which version, an adaptation parent → version (read at once: the table is
    # redrawn every second while a job runs)
    rows = _wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('tr.job')].map((r) => [r.cells[1].textContent, "
        "r.querySelector('.job-version').textContent])"), "the jobs table")
    assert sorted(text for kind, text in rows if kind == "fit") == ["task source on v0001", "task topic on v0001"]
    assert not [text for _, text in rows if "v0001 → v0001" in text]
    assert ["adapt", "v0002 → v0005"] in rows

    # jobs: the running adaptation's progress moves while the page polls it
    def step() -> int:
        found = _css(driver, f'.progress[data-job="{running}"]')
        return int(found[0].get_attribute("data-step")) if found else -1

    _wait(driver, lambda d: (r := _css(d, f'tr[data-job="{running}"]')) and r[0].get_attribute("data-state")
          == "running" and "tokens/s" in r[0].text and "ETA" in r[0].text, "the running job's progress")
    first = _wait(driver, lambda d: step() > 0 and step(), "the job's step")
    _wait(driver, lambda d: step() > first, "the job's step moving", timeout_s=90)
    _wait(driver, lambda d: "forgetting gate rejected v0003" in _css(d, "tr.job-rejected")[0].text,
          "the rejected job with its error")
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 1280  # no sideways scrolling
    driver.save_screenshot(str(tmp_path / "ui-page-1280x800.png"))
    # with the token, nothing the page asked for failed: no 404 (no evaluations configured, no favicon), no error
    assert _failed_loads(_console(driver)) == []

    # cancel: refused with the inference token (the page shows the 401), done with the management token
    _click(driver, f'button.cancel[data-job="{running}"]')
    driver.switch_to.alert.accept()
    _wait(driver, lambda d: "401" in d.find_element("id", "status").text, "the refused cancel")
    token = driver.find_element("id", "token")
    token.clear()
    token.send_keys(MGMT, Keys.ENTER)
    _click(driver, f'button.cancel[data-job="{running}"]')
    driver.switch_to.alert.accept()
    _wait(driver, lambda d: (r := _css(d, f'tr[data-job="{running}"]')) and r[0].get_attribute("data-state")
          == "cancelled", "the job cancelled", timeout_s=90)


def test_the_page_is_open_static_files_and_nothing_else(service_settings):
    """/ui serves the page's own files without a token (they hold no data); the API behind it still wants one."""
    from fastapi.testclient import TestClient

    from das.app import build_app

    settings = service_settings.model_copy(update={"inference_token": INFER, "management_token": MGMT})
    with TestClient(build_app(settings)) as client:
        page = client.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/ui/app.js">' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]  # nothing loaded from elsewhere
        for name, kind in (("app.js", "text/javascript"), ("importance.js", "text/javascript"),
                           ("style.css", "text/css")):
            answer = client.get(f"/ui/{name}")
            assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind), name
        assert client.get("/ui/", follow_redirects=False).headers["location"] == "/ui"
        for name in ("missing.js", "index.html", "app.py", ".hidden.js"):
            answer = client.get(f"/ui/{name}")
            assert answer.status_code == 404 and "the page has no file" in answer.json()["detail"], name
        assert client.get("/ui/..%2Fui.py").status_code == 404  # a path, not a name: no route
        assert client.get("/v1/models").status_code == 401
        units = client.get("/v1/models/v0001/importance", params={"units": "true"},
                           headers={"Authorization": f"Bearer {INFER}"})
        assert units.status_code == 404  # the base model has no importance; adapted ones: the browser test
