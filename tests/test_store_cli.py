"""`das adapt --store`, `das versions`, `show`, `activate`, `importance` and `gc` on the embedded BERT."""

import json

import pytest
from typer.testing import CliRunner

from das.cli import app

runner = CliRunner()
SMALL = ["--steps", "4", "--batch-size", "4", "--max-length", "48", "--importance-samples", "8", "--lr", "1e-3"]


def _ok(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory, legal_docs, code_docs):
    root = tmp_path_factory.mktemp("cli")
    legal, code = root / "legal.txt", root / "code.txt"
    legal.write_text("\n".join(legal_docs), encoding="utf-8")
    code.write_text("\n".join(code_docs), encoding="utf-8")
    store = str(root / "store")
    _ok(["adapt", str(legal), "--domain", "legal", "--store", store, *SMALL])
    _ok(["adapt", str(code), "--domain", "code", "--store", store, *SMALL])
    return root, store


def test_versions_and_show(cli_store):
    _, store = cli_store
    listed = json.loads(_ok(["versions", "--store", store, "--json"]))
    assert [(v["id"], v["parent"], v["status"], v["domain"]) for v in listed] == [
        ("v0001", None, "retired", None), ("v0002", "v0001", "retired", "legal"),
        ("v0003", "v0002", "active", "code")]
    assert "v0003" in _ok(["versions", "--store", store])
    shown = json.loads(_ok(["show", "v0002", "--store", store]))
    assert shown["corpus"]["documents"] > 0 and "model.safetensors" in shown["files"]


def test_importance_summary_diff_and_png(cli_store):
    root, store = cli_store
    report = json.loads(_ok(["importance", "v0003", "--store", store, "--json", "--diff", "v0002"]))
    cumulative = report["cumulative"]["intermediate"]
    assert len(cumulative["mean"]) == 2 and all(0 <= x < 1 for x in cumulative["mean"])
    assert all(x >= 0 for x in report["added"]["intermediate"]["mean"])  # EMax only adds
    assert len(report["domain"]["output"]["share_above_half"]) == 2  # I(t) of the version's own domain
    assert report["diff"]["from"] == "v0002" and "became_important" in report["diff"]["groups"]["output"]
    png = root / "imp.png"
    _ok(["importance", "v0003", "--store", store, "--png", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    result = runner.invoke(app, ["importance", "v0001", "--store", store])
    assert result.exit_code == 2 and "base model" in result.output


def test_activate_rollback_and_clear_errors(cli_store):
    _, store = cli_store
    _ok(["activate", "v0002", "--store", store])
    assert json.loads(_ok(["show", "v0002", "--store", store]))["status"] == "active"
    _ok(["activate", "v0003", "--store", store])
    for args, message in ((["activate", "v0099"], "no version v0099"), (["show", "../etc"], "invalid version id"),
                          (["gc", "--keep", "0"], "at least 1")):
        result = runner.invoke(app, [*args, "--store", store])
        assert result.exit_code == 2 and message in result.output, result.output


def test_adapt_needs_exactly_one_target(cli_store):
    root, store = cli_store
    result = runner.invoke(app, ["adapt", str(root / "legal.txt"), "--domain", "x"])
    assert result.exit_code == 2 and "exactly one of --out" in result.output
    result = runner.invoke(app, ["adapt", str(root / "legal.txt"), "--domain", "x", "--store", store,
                                 "--base", "bert"])
    assert result.exit_code == 2 and "drop --base" in result.output


def test_gc_keeps_history(cli_store):
    _, store = cli_store
    _ok(["gc", "--keep", "1", "--store", store])
    listed = {v["id"]: v["status"] for v in json.loads(_ok(["versions", "--store", store, "--json"]))}
    assert listed == {"v0001": "archived", "v0002": "archived", "v0003": "active"}
    assert json.loads(_ok(["importance", "v0002", "--store", store, "--json"]))["version"] == "v0002"


@pytest.mark.parametrize("command", [["versions"], ["show", "v0001"], ["card", "v0001"], ["importance", "v0001"],
                                     ["activate", "v0001"], ["gc", "--keep", "2"], ["repair"], ["alias", "ls"],
                                     ["task", "list"], ["export", "v0001"]])
def test_a_store_that_does_not_exist_is_an_error_not_created(command, tmp_path):
    missing = tmp_path / "no-such-store"
    done = CliRunner().invoke(app, [*command, "--store", str(missing)])
    assert done.exit_code == 2, done.output
    assert f"no store at {missing}" in done.output
    assert not missing.exists()
