"""`das --url URL ...` against a real `das serve`: versions, submit + watch, predict, activate, and the errors."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from das_client import Client
from task_sets import source_task, write_jsonl
from test_client import INFER, MGMT, running_server, until_served
from typer.testing import CliRunner

from das.cli import app

runner = CliRunner()
TINY = ["--steps", "2", "--batch-size", "2", "--max-length", "32", "--importance-samples", "4",
        "--importance-batch-size", "2", "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("cli-remote-server")) as url:
        yield url


def das(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env={"DAS_URL": None, "DAS_TOKEN": None, **(env or {})})


@pytest.fixture
def corpus(tmp_path, legal_docs):
    path = tmp_path / "legal.txt"
    path.write_text("\n".join(legal_docs[:40]) + "\n", encoding="utf-8")
    return path


def test_versions_submit_watch_predict_and_activate(server, corpus, tmp_path):
    listed = das("--url", server, "--token", INFER, "versions", "--json")
    assert listed.exit_code == 0, listed.output
    assert [v["id"] for v in json.loads(listed.stdout)] == ["v0001"]

    submitted = das("--url", server, "--token", MGMT, "submit", str(corpus), "--domain", "legal", *TINY, "--watch")
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.splitlines()[0]
    assert f"job {job_id} succeeded: v0002 (parent v0001)" in submitted.stderr
    assert f"job {job_id[:8]} succeeded" in submitted.stderr  # the progress line
    watched = das("watch", job_id, "--json", env={"DAS_URL": server, "DAS_TOKEN": INFER})  # all from the env
    assert watched.exit_code == 0, watched.output
    job = json.loads(watched.stdout)
    assert (job["state"], job["version"], job["settings"]["steps"], job["settings"]["batch_size"]) == \
           ("succeeded", "v0002", 2, 2)

    sets = source_task(n_train=20, n_eval=10)
    with Client(server, token=MGMT) as client:  # a task to predict with (the CLI registers none on a server)
        client.wait(client.register_task("source", write_jsonl(tmp_path / "train.jsonl", sets["train"]),
                                         write_jsonl(tmp_path / "eval.jsonl", sets["eval"])), progress=False)
        until_served(lambda: client.predict("source", "a text"))
    text = sets["heldout"][0][0]
    predicted = das("--url", server, "--token", INFER, "predict", text, "another text", "--task", "source", "--json")
    assert predicted.exit_code == 0, predicted.output
    answer = json.loads(predicted.stdout)
    assert answer["version"] == "v0002" and len(answer["results"]) == 2
    assert answer["results"][0]["label"] in ("code", "licence")
    table = das("--url", server, "--token", INFER, "predict", text)  # every served task, as a table
    assert table.exit_code == 0 and "source" in table.stdout and "answered by v0002" in table.stdout
    older = das("--url", server, "--token", INFER, "predict", text, "--task", "source", "--version", "v0001")
    assert older.exit_code == 2 and "HTTP 409: task 'source' has no model on v0001" in older.stderr

    activated = das("--url", server, "--token", MGMT, "activate", "v0001")
    assert activated.exit_code == 0, activated.output
    assert "v0001 is active" in activated.stderr and "fit job" in activated.stderr
    listed = das("--url", server, "--token", INFER, "versions")
    assert listed.exit_code == 0 and "v0001" in listed.stdout and "active" in listed.stdout


def test_watching_a_cancelled_job_exits_1_with_the_reason(server, corpus):
    submitted = das("--url", server, "--token", MGMT, "submit", str(corpus), "--domain", "legal-long",
                    *TINY[2:], "--steps", "400")
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    with Client(server, token=MGMT) as client:
        client.cancel(job_id)
    watched = das("--url", server, "--token", MGMT, "watch", job_id)
    assert watched.exit_code == 1 and f"job {job_id} ended cancelled" in watched.stderr


@pytest.mark.parametrize("args, message", [
    (["activate", "v0099"], "HTTP 404: "),  # the server's status and message
    (["submit", "missing.txt", "--domain", "legal"], "missing.txt"),
    (["submit", "--domain", "Not A Domain!", __file__], "HTTP 422: invalid domain name 'Not A Domain!'"),
])
def test_server_errors_exit_2_with_the_servers_message(server, args, message):
    result = das("--url", server, "--token", MGMT, *args)
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_a_wrong_token_says_how_to_give_one(server):
    result = das("--url", server, "--token", "wrong", "versions")
    assert result.exit_code == 2
    assert "HTTP 401: missing or wrong bearer token" in result.stderr and "DAS_TOKEN" in result.stderr


def test_server_commands_need_a_url_and_local_ones_refuse_it(tmp_path):
    result = das("submit", "corpus.txt", "--domain", "legal")
    assert result.exit_code == 2 and "das --url URL submit" in result.stderr
    result = das("--url", "http://127.0.0.1:9", "adapt", "corpus.txt", "--domain", "legal")
    assert result.exit_code == 2 and "`das adapt` works on a local store" in result.stderr
    result = das("--url", "127.0.0.1:8000", "versions")
    assert result.exit_code == 2 and "with its scheme" in result.stderr
    (tmp_path / "store").mkdir()
    result = das("versions", "--store", str(tmp_path / "store"), "--json")  # no URL: the local store, as before
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_help_says_how_to_reach_a_server():
    assert "--url" in das("--help").stdout
    local = das("versions", "--help")
    assert "--store" in local.stdout and "das --url URL versions" in local.stdout
    remote = das("--url", "http://127.0.0.1:9", "versions", "--help")
    assert remote.exit_code == 0 and "--store" not in remote.stdout and "server" in remote.stdout
    for command in ("submit", "watch", "predict", "activate"):
        shown = das("--url", "http://127.0.0.1:9", command, "--help")
        assert shown.exit_code == 0 and "--url" in shown.stdout, command
