"""`das task ...` without a server: register, fit on the active version, list, delete; bad input exits 2."""

from __future__ import annotations

import json

from task_sets import source_task, write_jsonl
from typer.testing import CliRunner

from das.cli import app

runner = CliRunner()


def test_task_add_fits_on_the_active_version_and_lists_its_score(tmp_path, monkeypatch):
    monkeypatch.setenv("DAS_WORK_DIR", str(tmp_path / "work"))
    store = str(tmp_path / "store")
    sets = source_task(n_train=30, n_eval=20)
    train = write_jsonl(tmp_path / "train.jsonl", sets["train"])
    evals = write_jsonl(tmp_path / "eval.jsonl", sets["eval"])
    added = runner.invoke(app, ["task", "add", "source", str(train), "--eval", str(evals), "--store", store])
    assert added.exit_code == 0, added.output
    assert "source on v0001: macro_f1" in added.output
    listed = runner.invoke(app, ["task", "list", "--store", store, "--json"])
    [task] = json.loads(listed.output)
    assert task["name"] == "source" and task["labels"] == ["code", "licence"]
    assert task["history"][0]["version"] == "v0001" and task["history"][0]["scores"]["macro_f1"] > 80
    again = runner.invoke(app, ["task", "add", "source", str(train), "--store", store])
    assert again.exit_code == 2 and "--replace" in again.output
    assert runner.invoke(app, ["task", "delete", "source", "--store", store]).exit_code == 0
    assert json.loads(runner.invoke(app, ["task", "list", "--store", store, "--json"]).output) == []


def test_task_add_refuses_bad_data_and_settings(tmp_path):
    store = str(tmp_path / "store")
    one_label = write_jsonl(tmp_path / "one.jsonl", [("a text", "x"), ("another text", "x")])
    result = runner.invoke(app, ["task", "add", "t", str(one_label), "--store", store])
    assert result.exit_code == 2 and "at least 2 labels" in result.output
    good = write_jsonl(tmp_path / "good.jsonl", [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")])
    result = runner.invoke(app, ["task", "add", "t", str(good), "--l2", "-1", "--store", store])
    assert result.exit_code == 2 and "l2 must be within" in result.output
    result = runner.invoke(app, ["task", "add", "t", str(tmp_path / "missing.jsonl"), "--store", store])
    assert result.exit_code == 2 and "no such file" in result.output
