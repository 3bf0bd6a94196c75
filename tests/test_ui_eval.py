"""The Evaluation section of /ui and the API behind it: `das serve --eval-results FILE` with a real `das eval`
results.json (bench/results/eval18-embedded-results.json: 5 methods, 4 domains, 3 seeds).

The API test reads /v1/evaluations through the real app; the start-up test runs `das serve` with a bad file; the
browser test (headless Debian Chromium, skipped without it, as tests/test_ui.py) counts what the page draws.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_client import INFER, MGMT, _wait_ready, free_port
from test_ui import _css, _screenshot, _wait, browser, driver  # noqa: F401 (driver: the browser fixture)

from das_settings import get_settings

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "eval18-embedded-results.json"
NAME = "eval18-embedded-results"


def _results() -> dict:
    return json.loads(RESULTS.read_text(encoding="utf-8"))


def _serve_command(port: int, *files: Path) -> list[str]:
    args = [a for f in files for a in ("--eval-results", str(f))]
    return [sys.executable, "-c", "from das.cli import app; app()", "serve", "--port", str(port), *args]


def _env(root: Path) -> dict[str, str]:
    env = {**os.environ, "DAS_STORE": str(root / "store"), "DAS_WORK_DIR": str(root / "work"),
           "DAS_MODELS_DIR": str(get_settings().models_dir), "DAS_MANAGEMENT_TOKEN": MGMT,
           "DAS_INFERENCE_TOKEN": INFER, "DAS_POLL_INTERVAL_S": "0.5"}
    for name in ("DAS_URL", "DAS_TOKEN", "DAS_BROKER_URL", "DAS_EVAL_RESULTS"):
        env.pop(name, None)
    return env


@contextmanager
def serving_evaluation(root: Path, *files: Path) -> Iterator[str]:
    port = free_port()
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(_serve_command(port, *files), env=_env(root), stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(f"http://127.0.0.1:{port}", proc, root / "server.log")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(30)


# -------------------------------------------------------------------------------- the API
def test_the_api_lists_an_evaluation_and_gives_its_matrices_and_points(service_settings):
    from fastapi.testclient import TestClient

    from das.app import build_app

    results = _results()
    settings = service_settings.model_copy(update={"inference_token": INFER, "management_token": MGMT,
                                                   "eval_results": [RESULTS]})
    with TestClient(build_app(settings)) as client:
        assert client.get("/v1/evaluations").status_code == 401  # a read under the inference token
        auth = {"Authorization": f"Bearer {INFER}"}
        listed = client.get("/v1/evaluations", headers=auth)
        assert listed.status_code == 200, listed.text
        assert listed.json() == [{"name": NAME, "file": RESULTS.name, "methods": list(results["methods"]),
                                  "domains": results["domains"], "seeds": results["seeds"]}]
        detail = client.get(f"/v1/evaluations/{NAME}", headers=auth).json()
        n = len(results["domains"])
        assert detail["stages"] == ["base", *results["domains"]] and detail["probe_family"] == "probe/macro_f1"
        assert detail["loss_kind"] == "mlm"  # a results file from before causal bases: its held-out loss is MLM
        views = {m["spec"]: m for m in detail["method_views"]}
        assert list(views) == list(results["methods"])
        for spec, view in views.items():
            for score in ("mlm_loss", *results["families"]):
                per_seed = [results["scores"][spec][str(seed)][score] for seed in results["seeds"]]
                expected = [[statistics.fmean(m[t][i] for m in per_seed) for i in range(n)] for t in range(n + 1)]
                got = view["matrices"][score]
                assert [v for row in got for v in row] == pytest.approx([v for row in expected for v in row]), \
                    (spec, score)
                assert [len(row) for row in got] == [n] * (n + 1)
        assert views["base"]["pareto"] == {"mlm": None, "probe": None}  # the base model learns nothing
        das = results["summary"]["das"]
        assert views["das"]["pareto"]["mlm"]["gain"]["mean"] == pytest.approx(das["mlm_loss"]["gain"]["mean"])
        assert views["das"]["pareto"]["mlm"]["forgetting"]["mean"] == pytest.approx(das["mlm_loss"]["rise"]["mean"])
        assert views["das"]["pareto"]["probe"]["forgetting"]["mean"] == pytest.approx(
            das["probe/macro_f1"]["forgetting_rate"]["mean"])
        missing = client.get("/v1/evaluations/nope", headers=auth)
        assert missing.status_code == 404 and NAME in missing.json()["detail"]


def test_without_eval_results_the_list_is_empty_and_a_name_is_404(service_settings):
    """None configured: the collection is empty (200, what the page asks for without an error in the console), and
    an evaluation named anyway is a 404 that says how to configure one."""
    from fastapi.testclient import TestClient

    from das.app import build_app

    settings = service_settings.model_copy(update={"inference_token": INFER, "management_token": MGMT})
    with TestClient(build_app(settings)) as client:
        auth = {"Authorization": f"Bearer {INFER}"}
        listed = client.get("/v1/evaluations", headers=auth)
        assert listed.status_code == 200 and listed.json() == []
        named = client.get("/v1/evaluations/eval18", headers=auth)
        assert named.status_code == 404 and "--eval-results" in named.json()["detail"]


@pytest.mark.parametrize("content, says", [
    ("not json {", "not valid JSON (Expecting value at line 1 column 1)"),
    ('{"format": "das-eval", "seeds": [' + "1" * 5000 + "]}", "not readable JSON (Exceeds the limit (4300 digits)"),
    ("[" * 100_000 + "]" * 100_000, "nests 100000 levels deep"),
    (json.dumps({"format": "das-eval"}), "format_version is missing"),
    ("damaged", "scores.das.1.mlm_loss row 2 value 3 is a string, expected a finite number"),
])
def test_a_bad_results_file_stops_das_serve_naming_it(tmp_path, content, says):
    bad = tmp_path / "bad-results.json"
    if content == "damaged":
        results = _results()
        results["scores"]["das"]["1"]["mlm_loss"][2][3] = "x"
        content = json.dumps(results)
    bad.write_text(content, encoding="utf-8")
    done = subprocess.run(_serve_command(free_port(), RESULTS, bad), env=_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, said
    assert f"--eval-results {bad}" in said and says in said, said
    assert "Traceback" not in said


def test_das_eval_results_is_a_json_list_setting(monkeypatch):
    from das_settings import Settings

    monkeypatch.setenv("DAS_EVAL_RESULTS", json.dumps([str(RESULTS)]))
    assert Settings().eval_results == [RESULTS]
    monkeypatch.delenv("DAS_EVAL_RESULTS")
    assert Settings().eval_results == []


# -------------------------------------------------------------------------------- the page, read in the browser
@browser
def test_the_page_draws_the_matrices_and_the_pareto_plots(tmp_path, driver):  # noqa: F811 (the fixture)
    from selenium.webdriver.common.keys import Keys

    results = _results()
    methods, domains = len(results["methods"]), len(results["domains"])
    trained = sum(m["kind"] != "base" for m in results["methods"].values())
    with serving_evaluation(tmp_path, RESULTS) as url:
        driver.set_window_size(1280, 800)
        driver.get(f"{url}/ui")
        assert not driver.find_element("id", "evaluation").is_displayed()  # no token: nothing listed yet
        driver.find_element("id", "token").send_keys(INFER, Keys.ENTER)
        # per method two a[T, i] matrices (MLM loss, probe macro-F1): (base + domains) rows x domains columns
        cells = methods * 2 * (domains + 1) * domains
        _wait(driver, lambda d: len(_css(d, ".eval-matrix .eval-cell")) == cells, f"{cells} matrix cells")
        section = driver.find_element("id", "evaluation")
        assert section.is_displayed() and driver.find_element("id", "evaluation-link").is_displayed()
        assert {m.get_attribute("data-score") for m in _css(driver, ".eval-matrix")} == {"mlm_loss", "probe/macro_f1"}
        das_loss = _css(driver, '.eval-matrix[data-method="das"][data-score="mlm_loss"] .eval-cell text')
        assert [c.text for c in das_loss[:domains]] == [f"{v:.2f}" for v in _mean_row(results, "das", 0)]
        assert len(_css(driver, "#evaluation svg.legend")) == 2  # one colour scale per score, labelled
        assert "held-out MLM loss" in section.text  # the loss named by the results' loss_kind (a masked base)
        for plot in ("mlm", "probe"):
            points = _css(driver, f'.pareto[data-plot="{plot}"] .pareto-point')
            assert len(points) == trained, plot
            assert {p.get_attribute("data-method") for p in points} == {
                s for s, m in results["methods"].items() if m["kind"] != "base"}
            assert any(p.get_attribute("data-front") == "yes" for p in points)
            assert {p.find_element("css selector", "text").text for p in points} >= {"das", "ncl"}  # labelled
        _screenshot(section, "ui-evaluation.png", tmp_path)
        _screenshot(_css(driver, '.pareto[data-plot="mlm"]')[0], "ui-evaluation-pareto.png", tmp_path)


def _mean_row(results: dict, spec: str, stage: int) -> list[float]:
    seeds = [results["scores"][spec][str(s)]["mlm_loss"][stage] for s in results["seeds"]]
    return [statistics.fmean(row[i] for row in seeds) for i in range(len(results["domains"]))]


def test_a_causal_evaluation_names_its_next_token_loss(service_settings):
    from fastapi.testclient import TestClient

    from das.app import build_app

    causal = Path(__file__).resolve().parents[1] / "bench" / "results" / "eval34-smollm2-2seeds-results.json"
    settings = service_settings.model_copy(update={"eval_results": [causal]})
    with TestClient(build_app(settings)) as client:
        [listed] = client.get("/v1/evaluations").json()
        assert client.get(f"/v1/evaluations/{listed['name']}").json()["loss_kind"] == "next_token"
