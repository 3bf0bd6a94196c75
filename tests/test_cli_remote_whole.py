"""`das --url URL ...` against a real `das serve`, the commands beyond submit/watch/predict (tests/test_cli_remote.py):
show, card and importance (each printing what the local command prints for the server's store), aliases, end
tasks, job lists and cancel; and job ids named by a prefix, in the CLI, the client and the API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from das_client import Client, Conflict, InvalidRequest, NotFound
from task_sets import source_task, write_jsonl
from test_client import INFER, MGMT, TINY, running_server, until_served
from typer.testing import CliRunner

import job_records.job
from das.cli import app
from job_records import AdaptRequest, SqliteJobs, sqlite_path

runner = CliRunner()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-remote-whole")


@pytest.fixture(scope="module")
def server(root) -> Iterator[str]:
    with running_server(root) as url:
        yield url


@pytest.fixture(scope="module")
def adapted(server, legal_docs, root) -> str:
    """The server's store with v0002, a tiny adaptation of v0001 (so that it has importance)."""
    corpus = root / "legal.txt"
    corpus.write_text("\n".join(legal_docs[:40]) + "\n", encoding="utf-8")
    with Client(server, token=MGMT) as client:
        job = client.wait(client.upload_corpus(corpus, "legal", **TINY), progress=False)
    assert job.version == "v0002"
    return job.version


def das(*args: str, token: str = MGMT, url: str | None = None, stdin: str | None = None):
    """`das --url URL --token TOKEN ARGS...` (no URL: the local command)."""
    server = ["--url", url, "--token", token] if url else []
    return runner.invoke(app, [*server, *args], env={"DAS_URL": None, "DAS_TOKEN": None}, input=stdin)


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def test_show_card_and_importance_print_what_the_local_commands_print(server, adapted, root, tmp_path):
    store = str(root / "store")
    shown = json.loads(ok(das("show", adapted, url=server, token=INFER)))
    local = json.loads(ok(das("show", adapted, "--store", store)))
    assert shown["aliases"] == ["production"] and {k: shown[k] for k in local} == local

    assert ok(das("card", adapted, url=server, token=INFER)) == ok(das("card", adapted, "--store", store))
    assert ok(das("card", adapted, url=server)).startswith("---\n")  # YAML front matter

    for options in ([], ["--diff", "v0002"]):
        remote = json.loads(ok(das("importance", adapted, *options, url=server, token=INFER)))
        assert remote == json.loads(ok(das("importance", adapted, *options, "--store", store))), options
    assert set(remote) >= {"version", "cumulative", "added", "diff"} and remote["diff"]["from"] == "v0002"
    png = tmp_path / "importance.png"
    wrote = das("importance", adapted, "--png", str(png), url=server, token=INFER)
    assert wrote.exit_code == 0 and f"wrote {png}" in wrote.stderr and wrote.stdout == ""
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    base = das("importance", "v0001", url=server)
    assert base.exit_code == 2 and "HTTP 404: v0001 has no importance" in base.stderr
    missing = das("card", "v0099", url=server)
    assert missing.exit_code == 2 and "HTTP 404" in missing.stderr
    refused = das("card", adapted, "--store", store, url=server)  # --store and --url: which one is meant?
    assert refused.exit_code == 2 and "drop --store to ask the server" in refused.stderr


def test_alias_commands_on_a_server_as_on_a_store(server, adapted, root):
    assert "staging -> v0001" in das("alias", "set", "staging", "v0001", url=server).stderr
    moved = das("alias", "set", "staging", adapted, url=server)
    assert moved.exit_code == 0 and f"staging -> {adapted} (was v0001)" in moved.stderr
    listed = ok(das("alias", "ls", url=server, token=INFER))
    assert f"production\t{adapted}" in listed and f"staging\t{adapted}" in listed
    as_json = json.loads(ok(das("alias", "ls", "--json", url=server, token=INFER)))
    assert as_json == json.loads(ok(das("alias", "ls", "--json", "--store", str(root / "store"))))
    production = das("alias", "set", "production", adapted, url=server)  # production is activation
    assert production.exit_code == 0 and f"{adapted} is active" in production.stderr

    removed = das("alias", "rm", "staging", url=server)
    assert removed.exit_code == 0 and f"removed staging (it named {adapted})" in removed.stderr
    assert "staging" not in json.loads(ok(das("alias", "ls", "--json", url=server)))
    kept = das("alias", "rm", "production", url=server)
    assert kept.exit_code == 2 and "HTTP 409" in kept.stderr
    reader = das("alias", "set", "staging", "v0001", url=server, token=INFER)  # the inference token only reads
    assert reader.exit_code == 2 and "HTTP 401" in reader.stderr and "DAS_TOKEN" in reader.stderr


def test_task_commands_add_list_show_predict_and_delete(server, adapted, tmp_path):
    sets = source_task(n_train=20, n_eval=10)
    train = write_jsonl(tmp_path / "train.jsonl", sets["train"])
    evaluation = write_jsonl(tmp_path / "eval.jsonl", sets["eval"])
    added = das("task", "add", "source", str(train), "--eval", str(evaluation), "--max-iter", "50", "--watch",
                url=server)
    assert added.exit_code == 0, added.output
    job_id = added.stdout.splitlines()[0]
    assert f"registered source (probe, {len(sets['train'])} examples): fit job {job_id[:8]} queued" in added.stderr
    assert f"source on {adapted}: " in added.stderr and "macro_f1" in added.stderr and "fitted in" in added.stderr

    table = ok(das("task", "list", url=server, token=INFER))
    assert "source" in table and f"{adapted}:" in table
    [listed] = json.loads(ok(das("task", "list", "--json", url=server, token=INFER)))
    shown = json.loads(ok(das("task", "show", "source", url=server, token=INFER)))
    assert listed["name"] == shown["name"] == "source" and shown["last_fit"]["job_id"] == job_id
    assert shown["settings"]["max_iter"] == 50 and set(shown["labels"]) == {"code", "licence"}

    texts = [sets["heldout"][0][0], sets["heldout"][1][0]]
    with Client(server, token=INFER) as client:
        until_served(lambda: client.predict("source", "a text"))
    answer = json.loads(ok(das("task", "predict", "source", *texts, "--json", url=server, token=INFER)))
    assert answer["version"] == adapted and len(answer["results"]) == 2
    lines = tmp_path / "texts.txt"
    lines.write_text(f"{texts[0]}\n\n{texts[1]}\n", encoding="utf-8")
    from_file = json.loads(ok(das("task", "predict", "source", "--file", str(lines), "--json", url=server)))
    from_stdin = json.loads(ok(das("task", "predict", "source", "--file", "-", "--json", "--top-k", "1",
                                   url=server, stdin=lines.read_text(encoding="utf-8"))))
    assert [r["label"] for r in from_file["results"]] == [r["label"] for r in answer["results"]]
    assert [r["label"] for r in from_stdin["results"]] == [r["label"] for r in answer["results"]]
    assert all(len(r["scores"]) == 1 for r in from_stdin["results"])  # --top-k was sent
    shown_table = ok(das("task", "predict", "source", texts[0], url=server))
    assert f"answered by {adapted}" in shown_table and "source" in shown_table
    none = das("task", "predict", "source", url=server)
    assert none.exit_code == 2 and "no texts" in none.stderr

    deleted = das("task", "delete", "source", url=server)
    assert deleted.exit_code == 0 and "deleted source" in deleted.stderr
    gone = das("task", "show", "source", url=server)
    assert gone.exit_code == 2 and "HTTP 404" in gone.stderr
    local = das("task", "show", "source")  # no server named: the local group says how to name one
    assert local.exit_code == 2 and "das --url URL task show" in local.stderr


def test_jobs_are_listed_a_page_at_a_time_and_cancelled_by_a_prefix(server, adapted, root):
    corpus = root / "legal.txt"  # the adapted fixture's
    with Client(server, token=MGMT) as client:
        long = client.upload_corpus(corpus, "legal-long", **{**TINY, "steps": 400})
    first = das("jobs", "--limit", "1", url=server, token=INFER)
    assert first.exit_code == 0 and long.id[:8] in first.stdout and "legal-long" in first.stdout
    cursor = first.stderr.split("more: add --cursor ", 1)[1].split()[0]
    [second] = json.loads(ok(das("jobs", "--limit", "1", "--cursor", cursor, "--json", url=server)))
    assert second["id"] != long.id and second["seq"] < long.seq
    adapts = json.loads(ok(das("jobs", "--kind", "adapt", "--domain", "legal", "--json", url=server)))
    assert adapts and all((j["kind"], j["domain"]) == ("adapt", "legal") for j in adapts)
    ended = json.loads(ok(das("jobs", "--state", "succeeded", "--limit", "1000", "--json", url=server)))
    assert ended and all(j["state"] == "succeeded" for j in ended) and long.id not in {j["id"] for j in ended}
    bad = das("jobs", "--state", "finished", url=server)
    assert bad.exit_code == 2 and "finished" in bad.output

    cancelled = das("cancel", long.id[:8], url=server)  # the 8 characters the list shows
    assert cancelled.exit_code == 0 and f"job {long.id}" in cancelled.stderr
    with Client(server, token=INFER) as client:
        assert client.wait(long.id[:6], progress=False, raise_on_failure=False).state == "cancelled"
    again = das("cancel", long.id[:6], url=server)
    assert again.exit_code == 2 and "already ended (cancelled)" in again.stderr
    short = das("cancel", long.id[:5], url=server)
    assert short.exit_code == 2 and "HTTP 422" in short.stderr and "at least its first 6" in short.stderr


def test_the_api_resolves_a_prefix_in_the_servers_own_job_records(server, root, monkeypatch):
    """Two jobs that share a prefix, written into the SQLite records the server reads (ended at once, so that no
    worker waits on them): a shared prefix is a 409 naming both, a short or non-hex one a 422, an unknown one a 404."""
    ids = ["fedcba01" + "0" * 24, "fedcba02" + "0" * 24]
    made = iter(ids)
    monkeypatch.setattr(job_records.job.uuid, "uuid4", lambda: uuid.UUID(hex=next(made)))
    records = SqliteJobs(sqlite_path(root / "work", str(root / "store")))
    for _ in ids:
        records.update(records.create(AdaptRequest("legal", "a" * 64, 1, {})).id, state="cancelled")

    headers = {"Authorization": f"Bearer {MGMT}"}
    with httpx.Client(base_url=server, headers=headers) as http:
        for method, path in [("GET", "/v1/jobs/{}"), ("DELETE", "/v1/jobs/{}"), ("GET", "/v1/jobs/{}/output"),
                             ("DELETE", "/v1/batch-predictions/{}")]:
            shared = http.request(method, path.format("fedcba"))
            assert shared.status_code == 409, (method, path, shared.text)
            assert ids[0] in shared.json()["detail"] and ids[1] in shared.json()["detail"]
            for given, status in [("fedcb", 422), ("fedcbaXY", 422), ("fedcba99", 404)]:
                assert http.request(method, path.format(given)).status_code == status, (method, path, given)
        assert http.get("/v1/jobs/FEDCBA02").json()["id"] == ids[1]
    with Client(server, token=INFER) as client:
        assert client.job("fedcba01").id == ids[0]
        with pytest.raises(Conflict, match="names more than one job"):
            client.job("fedcba")
        with pytest.raises(InvalidRequest, match="at least its first 6 characters"):
            client.job("fedc")
        with pytest.raises(NotFound, match="no job fedcba99"):
            client.job("fedcba99")
    shared = das("cancel", "fedcba", url=server)
    assert shared.exit_code == 2 and "HTTP 409" in shared.stderr and ids[0] in shared.stderr
