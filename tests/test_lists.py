"""Lists a user can query (issue #19): filters, cursor paging, ISO-8601 times, the `retired` status, model cards."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from service_helpers import upload, wait_for_job
from transformers import AutoModelForMaskedLM
from typer.testing import CliRunner

from das.app import build_app
from das.cli import app as cli
from das_engine import task_scores
from das_formats.fingerprint import sha256_file
from das_formats.task_data import TaskSettings
from das_settings import Settings, get_settings
from job_records import STATES, AdaptRequest, FitRequest, JobFilter, RedisJobs, SqliteJobs
from model_store.card import CARD, EMBEDDED_HUB_ID, render_card
from model_store.manifest import STATUSES
from model_store.store import ModelStore, PublishRequest
from model_store.tasks import TaskStore
from pipeline.task_intake import check_task_files, store_task_data

# ------------------------------------------------------------------ the job records: both backends filter and page


@pytest.fixture(params=["sqlite", "redis"])
def jobs(request, tmp_path, redis_url):
    if request.param == "sqlite":
        return SqliteJobs(tmp_path / "jobs.sqlite")
    return RedisJobs(redis_url, prefix=f"dastest-{uuid.uuid4().hex[:8]}:")


def _fill(jobs, n: int = 30) -> list:
    """n jobs, oldest first: adapt jobs of legal and code, fit jobs of topic and sentiment, in mixed states."""
    made = []
    for i in range(n):
        request = (AdaptRequest(("legal", "code")[i % 2], "a" * 64, 10, {}) if i % 3 else
                   FitRequest(("topic", "sentiment")[i % 2], "g", "b" * 64, 10))
        job = jobs.create(request)
        made.append(jobs.update(job.id, state=("failed", "succeeded", "queued", "cancelled")[i % 4]))
    return made


def _walk(jobs, where: JobFilter, limit: int) -> list[str]:
    """Every page of a filtered listing, each starting below the last job of the one before."""
    seen, before = [], None
    while True:
        page = jobs.list(limit, where=where, before_seq=before)
        assert len(page) <= limit
        seen += [j.id for j in page]
        if len(page) < limit:
            return seen
        before = page[-1].seq


@pytest.mark.parametrize("where", [JobFilter(), JobFilter(state="failed"), JobFilter(kind="fit"),
                                   JobFilter(domain="legal"), JobFilter(task="topic"),
                                   JobFilter(state="succeeded", kind="adapt", domain="code")])
def test_the_records_filter_before_paging_newest_first(jobs, where):
    made = _fill(jobs)
    expected = [j.id for j in reversed(made) if where.matches(j)]
    assert expected and len(expected) < len(made) or where.empty
    assert [j.id for j in jobs.list(1000, where=where)] == expected
    assert [j.id for j in jobs.list(3, where=where)] == expected[:3]  # a page of 3 matches holds 3 matches
    assert _walk(jobs, where, limit=4) == expected  # all pages: no gap, no duplicate, in order


def test_the_records_filter_matches_the_jobs_they_hold(jobs):
    made = {j.id: j for j in _fill(jobs, 12)}
    for job in jobs.list(100, where=JobFilter(state="failed", kind="adapt")):
        assert (job.state, job.kind) == ("failed", "adapt") and made[job.id] == job
    assert {j.task for j in jobs.list(100, where=JobFilter(kind="fit"))} == {"topic", "sentiment"}
    assert jobs.list(100, where=JobFilter(domain="topic")) == []  # a task is no domain
    assert jobs.list(100, where=JobFilter(domain="nowhere")) == []


def test_a_walk_is_stable_while_jobs_are_accepted(jobs):
    made = _fill(jobs, 10)
    first = jobs.list(4)
    late = [jobs.create(AdaptRequest("legal", "c" * 64, 1, {})) for _ in range(3)]  # newer than every page
    rest = jobs.list(100, before_seq=first[-1].seq)
    assert [j.id for j in first + rest] == [j.id for j in reversed(made)]
    assert not {j.id for j in late} & {j.id for j in rest}


def test_an_unknown_state_or_kind_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown state 'broken'; allowed: queued, running, succeeded"):
        JobFilter(state="broken")
    with pytest.raises(ValueError, match="unknown kind 'train'; allowed: adapt, fit"):
        JobFilter(kind="train")


def test_old_records_filter_as_they_read(tmp_path, redis_url):
    """A fit record written before the kinds had fields (its task in `domain`, no `kind` on adapt records)."""
    old_fit = {"id": "f" * 32, "seq": 1, "state": "failed", "kind": "fit", "created": 1.0, "domain": "topic",
               "corpus_id": "b" * 64, "corpus_documents": 5, "settings": {"generation": "g"}}
    old_adapt = {"id": "a" * 32, "seq": 2, "state": "succeeded", "created": 2.0, "domain": "legal",
                 "corpus_id": "a" * 64, "corpus_documents": 5, "settings": {}}
    sqlite = SqliteJobs(tmp_path / "jobs.sqlite")
    for record in (old_fit, old_adapt):
        sqlite._db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, NULL, 0)",
                           (record["id"], record["seq"], record["state"], json.dumps(record)))
    redis = RedisJobs(redis_url, prefix=f"dastest-{uuid.uuid4().hex[:8]}:")
    for record in (old_fit, old_adapt):
        redis.r.set(redis._key(record["id"]), json.dumps(record))
        redis.r.zadd(f"{redis.PREFIX}jobs", {record["id"]: record["seq"]})
    for records in (sqlite, redis):
        assert [j.id for j in records.list(where=JobFilter(task="topic"))] == [old_fit["id"]]
        assert [j.id for j in records.list(where=JobFilter(domain="topic"))] == []
        assert [j.id for j in records.list(where=JobFilter(kind="adapt"))] == [old_adapt["id"]]
        assert [j.id for j in records.list(where=JobFilter(domain="legal"))] == [old_adapt["id"]]


# ------------------------------------------------------------------ the API: GET /v1/jobs


def _pages(client, url: str) -> list[list[dict]]:
    """Follow Link rel="next" from `url` to the last page; X-Next-Cursor says the same as Link."""
    pages = []
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200, response.text
        assert isinstance(response.json(), list)
        pages.append(response.json())
        link, cursor = response.headers.get("link"), response.headers.get("x-next-cursor")
        assert (link is None) == (cursor is None)
        url = None
        if link is not None:
            assert link.endswith('>; rel="next"') and f"cursor={cursor}" in link
            url = link[1:link.index(">")]
    return pages


def _iso(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset().total_seconds() == 0, text  # UTC
    return parsed


def test_jobs_filter_page_and_show_iso_times(service_settings):
    with TestClient(build_app(service_settings)) as client:
        service = client.app.state.service
        made = _fill(service.jobs, 25)  # records only: never submitted, so the worker leaves them be
        service.jobs.update(made[0].id, started=time.time() - 5, finished=time.time())
        newest_first = list(reversed(made))

        everything = _pages(client, "/v1/jobs?limit=7")
        assert [len(p) for p in everything] == [7, 7, 7, 4]
        assert [j["id"] for p in everything for j in p] == [j.id for j in newest_first]

        for query, keep in (("state=failed", lambda j: j.state == "failed"), ("kind=fit", lambda j: j.kind == "fit"),
                            ("domain=legal", lambda j: j.kind == "adapt" and j.domain == "legal"),
                            ("task=topic", lambda j: j.task == "topic"),
                            ("state=queued&kind=adapt", lambda j: j.state == "queued" and j.kind == "adapt")):
            pages = _pages(client, f"/v1/jobs?{query}&limit=2")
            expected = [j.id for j in newest_first if keep(j)]
            assert [j["id"] for p in pages for j in p] == expected, query
            assert all(len(p) == 2 for p in pages[:-1]) and len(pages) == (len(expected) + 1) // 2, query

        for job in client.get("/v1/jobs?limit=100").json():  # ISO-8601 UTC, as the record's epoch times say
            record = service.jobs.get(job["id"])
            assert abs(_iso(job["created"]).timestamp() - record.created) < 0.001
            assert (job["started"] is None) == (record.started is None) and job["dispatched"] is None
        oldest = client.get(f"/v1/jobs/{made[0].id}").json()
        assert _iso(oldest["started"]) < _iso(oldest["finished"])
        assert abs(_iso(oldest["finished"]).timestamp() - service.jobs.get(made[0].id).finished) < 0.001


def test_a_jobs_walk_is_stable_under_new_jobs(service_settings):
    with TestClient(build_app(service_settings)) as client:
        service = client.app.state.service
        made = _fill(service.jobs, 9)
        first = client.get("/v1/jobs?limit=4")
        for _ in range(3):
            service.jobs.create(AdaptRequest("legal", "c" * 64, 1, {}))
        rest = _pages(client, f"/v1/jobs?limit=4&cursor={first.headers['x-next-cursor']}")
        assert [j["id"] for j in first.json() + [j for p in rest for j in p]] == [j.id for j in reversed(made)]


def test_bad_filters_and_cursors_are_422_saying_what_to_send(service_settings):
    with TestClient(build_app(service_settings)) as client:
        _fill(client.app.state.service.jobs, 3)
        state = client.get("/v1/jobs?state=done")
        assert state.status_code == 422 and all(s in state.json()["detail"] for s in STATES)
        kind = client.get("/v1/jobs?kind=train")
        assert kind.status_code == 422 and "adapt, fit" in kind.json()["detail"]
        assert "invalid domain name" in client.get("/v1/jobs?domain=../x").json()["detail"]
        assert "invalid task name" in client.get("/v1/jobs?task=Not A Task").json()["detail"]
        status = client.get("/v1/models?status=live")
        assert status.status_code == 422 and all(s in status.json()["detail"] for s in STATUSES)
        tasks = client.get("/v1/tasks?kind=svm")
        assert tasks.status_code == 422 and "probe, finetune" in tasks.json()["detail"]
        models_cursor = client.get("/v1/models?limit=1")  # v0001 only: no next page
        assert "x-next-cursor" not in models_cursor.headers
        jobs_cursor = client.get("/v1/jobs?limit=1").headers["x-next-cursor"]
        for route in ("/v1/jobs", "/v1/models", "/v1/tasks"):
            for cursor in ("garbage", "!!", "WyJqb2JzIiwgLTFd", jobs_cursor if route != "/v1/jobs" else "e30"):
                answer = client.get(f"{route}?cursor={cursor}")
                assert answer.status_code == 422, (route, cursor, answer.text)
                assert "invalid cursor" in answer.json()["detail"] and "X-Next-Cursor" in answer.json()["detail"]
        for route in ("/v1/jobs", "/v1/models", "/v1/tasks"):
            assert client.get(f"{route}?limit=0").status_code == 422
            assert client.get(f"{route}?limit=1001").status_code == 422


# ------------------------------------------------------------------ the API: GET /v1/tasks


def _register(store, tmp_path: Path, name: str, kind: str) -> None:
    """A task as POST /v1/tasks stores it (its data checked and content-addressed), without a fit job."""
    train = tmp_path / f"{name}.jsonl"
    train.write_text("".join(json.dumps({"text": f"text {i} of {name}", "label": "ab"[i % 2]}) + "\n"
                             for i in range(6)))
    train_set, _ = check_task_files(kind, TaskSettings(), train, None, Settings())
    definition = store_task_data(store, name, kind, TaskSettings(), (train, train_set, train.name), None)
    TaskStore(store).put_definition(definition)


def test_tasks_filter_by_kind_and_page_by_name(service_settings, tmp_path):
    with TestClient(build_app(service_settings)) as client:
        store = client.app.state.service.store
        kinds = {"alpha": "probe", "bravo": "finetune", "charlie": "probe", "delta": "probe", "echo": "finetune"}
        for name, kind in kinds.items():
            _register(store, tmp_path, name, kind)
        pages = _pages(client, "/v1/tasks?limit=2")
        assert [[t["name"] for t in p] for p in pages] == [["alpha", "bravo"], ["charlie", "delta"], ["echo"]]
        probes = _pages(client, "/v1/tasks?kind=probe&limit=2")
        assert [[t["name"] for t in p] for p in probes] == [["alpha", "charlie"], ["delta"]]
        assert [t["name"] for t in client.get("/v1/tasks?kind=finetune").json()] == ["bravo", "echo"]
        for task in client.get("/v1/tasks").json():
            _iso(task["created"])


# ------------------------------------------------------------------ the API: GET /v1/models, retired, the card


@pytest.fixture(scope="module")
def versions(tmp_path_factory, legal_docs):
    """A service whose store holds v0001 and three real adaptations (steps=2), v0002 reactivated, and v0005 a
    candidate published from v0002 without activation: statuses retired, active, retired, retired, candidate."""
    tmp_path = tmp_path_factory.mktemp("versions")
    settings = Settings(store=str(tmp_path / "store"), work_dir=tmp_path / "work", models_dir=get_settings().models_dir,
                        poll_interval_s=0.5, heartbeat_s=1.0, max_wait_ms=2.0)
    corpus = tmp_path / "legal.txt"
    corpus.write_text("\n".join(legal_docs[:60]) + "\n", encoding="utf-8")
    with TestClient(build_app(settings)) as client:
        for domain in ("legal", "code", "legal"):
            job = wait_for_job(client, upload(client, corpus, domain=domain, steps="2")["job_id"])
            assert job["state"] == "succeeded", job
        assert client.post("/v1/models/v0002/activate").status_code == 200
        store = client.app.state.service.store
        folder = shutil.copytree(store.model_dir("v0002"), tmp_path / "branch",
                                 ignore=shutil.ignore_patterns("manifest.json"))
        store.publish(PublishRequest(folder=folder, parent="v0002", domain="code", base_model="embedded"),
                      activate=False)
        yield client


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4:card.index("\n---\n", 4)])


def test_every_version_has_a_model_card(versions, tmp_path):
    store = versions.app.state.service.store
    manifest = store.manifest("v0004")
    folder = store.model_dir("v0004")
    card = (folder / CARD).read_text()
    assert manifest.files[CARD] == sha256_file(folder / CARD)  # a file of the version like any other
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "fill-mask"
    assert meta["base_model"] == EMBEDDED_HUB_ID and manifest.base_model == "embedded"  # a hub id (test_model_card)
    assert "domain:legal" in meta["tags"]
    assert "# v0004\n" in card and manifest.created in card
    lineage = card[card.index("## Lineage"):card.index("## Domain and corpus")]
    assert [row.split("|")[1:3] for row in lineage.splitlines() if row.startswith("| `v")] == [
        [" `v0004` ", " legal "], [" `v0003` ", " code "], [" `v0002` ", " legal "], [" `v0001` ", " (base) "]]
    assert manifest.corpus.sha256 in card and f"| documents | {manifest.corpus.documents} |" in card
    assert "| `steps` | 2 |" in card and "| `tokens` |" in card  # the settings and the training metrics
    assert "No gate ran" in card  # no end task was registered
    importance = card[card.index("## Importance"):card.index("## Use")]
    assert "| cumulative | attention heads" in importance and "| domain | FFN output neurons" in importance
    assert "status when published | candidate" in card  # the worker publishes, then activates
    AutoModelForMaskedLM.from_pretrained(folder)  # a folder with README.md loads as before
    # v0001 has one too, and `das card` prints a version's card
    base = store.model_dir("v0001") / CARD
    assert _front_matter(base.read_text())["base_model"] == EMBEDDED_HUB_ID
    assert "the base model as given" in base.read_text() and CARD in store.manifest("v0001").files
    printed = CliRunner().invoke(cli, ["card", "v0004", "--store", str(store.backend.root)])
    assert printed.exit_code == 0 and printed.output == card
    # a republished folder that holds a card gets its own
    assert "# v0005\n" in (store.model_dir("v0005") / CARD).read_text()


def test_models_filter_page_and_say_retired(versions):
    client = versions
    models = client.get("/v1/models").json()
    assert [(m["id"], m["status"]) for m in models] == [("v0001", "retired"), ("v0002", "active"),
                                                        ("v0003", "retired"), ("v0004", "retired"),
                                                        ("v0005", "candidate")]
    assert [[m["id"] for m in p] for p in _pages(client, "/v1/models?limit=2")] == [
        ["v0001", "v0002"], ["v0003", "v0004"], ["v0005"]]
    retired = _pages(client, "/v1/models?status=retired&limit=2")  # filtered before paging
    assert [[m["id"] for m in p] for p in retired] == [["v0001", "v0003"], ["v0004"]]
    assert [m["id"] for m in client.get("/v1/models?status=candidate").json()] == ["v0005"]
    assert [m["id"] for m in client.get("/v1/models?domain=legal").json()] == ["v0002", "v0004"]
    assert [m["id"] for m in client.get("/v1/models?domain=code&status=retired").json()] == ["v0003"]
    assert client.get("/v1/models?domain=medical").json() == []
    for model in models:
        _iso(model["created"])
    # a retired version can be activated again: it reads active, and the one it replaced reads retired
    assert client.post("/v1/models/v0003/activate").json()["status"] == "active"
    assert {m["id"]: m["status"] for m in client.get("/v1/models").json()} == {
        "v0001": "retired", "v0002": "retired", "v0003": "active", "v0004": "retired", "v0005": "candidate"}


def test_the_card_shows_the_forgetting_gate(tmp_path, bert_dir):
    store = ModelStore.open(tmp_path / "store")
    store.init_base(bert_dir, "embedded")
    for domain in ("legal", "code"):
        store.publish(PublishRequest(folder=bert_dir, parent=store.active_id(), domain=domain, base_model="embedded"))
    y_true = [i % 3 for i in range(60)]
    worse = [(y + 1) % 3 if i % 4 == 0 else y for i, y in enumerate(y_true)]
    decision = task_scores.gate("topic", y_true, y_true, worse, 3, 1.0, samples=200)
    gate = {"max_drop": 1.0, "forced": False, "rejected": decision.rejected, "against": "best on the lineage",
            "parent": "v0002", "unscored": [{"task": "broken", "problem": "its eval data is gone"}],
            "decisions": [dataclasses.asdict(decision) | {"reference": {"version": "v0002", "recorded_f1": 100.0}}]}
    scored = dataclasses.replace(store.manifest("v0003"), status="rejected", evaluation={
        "tasks": {"topic": {"macro_f1": decision.candidate_f1, "accuracy": 75.0, "n": 60}}, "gate": gate})
    card = render_card(scored, store.lineage("v0002"), None)
    section = card[card.index("## Forgetting gate"):card.index("## Metrics")]
    assert decision.rejected and "**rejected**" in section
    assert f"| topic | `v0002` | 100.00 | {decision.candidate_f1:.2f} | {decision.drop:.2f} |" in section
    assert "unscored: broken: its eval data is gone" in section and "| topic | " in section.split("End-task")[1]
