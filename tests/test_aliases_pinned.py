"""Aliases (issue #19): in the store (local and S3), the `das alias` CLI, and through the embedded service, where
inference can name a version or an alias and non-active versions are served from a bounded LRU."""

from __future__ import annotations

import gc
import json
import threading
import time
import uuid
import weakref

import boto3
import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer
from service_helpers import upload, wait_for_job, wait_serving
from task_sets import source_task, write_jsonl
from typer.testing import CliRunner

from das.app import build_app
from das.cli import app as cli
from das_settings import get_settings
from model_store import maintenance
from model_store.aliases import MAX_ALIASES, AliasNotFound, AliasRefused, AliasStore
from model_store.names import InvalidName
from model_store.store import ModelStore, PublishRequest, VersionNotFound

TEXT = {"texts": ["permission is hereby granted, free of charge, to any person obtaining a copy."]}
SMALL = {"steps": "2", "lr": "0.00001"}  # a tiny adaptation: a new version that the gate lets through
BUCKET = "das-aliases-test"


def _three_versions(store: ModelStore, folder) -> None:
    """v0001 (active), v0002 and v0003 published as candidates beside it (the same weights: aliases train nothing)."""
    store.init_base(folder, "embedded")
    for _ in range(2):
        store.publish(PublishRequest(folder=folder, parent="v0001", domain="legal", base_model="embedded"),
                      activate=False)


def _aliases_in(store: ModelStore) -> None:
    """What every backend must do with aliases: set, move, list, remove, refuse."""
    aliases = AliasStore(store)
    assert aliases.all() == {"production": "v0001"}
    assert aliases.set("staging", "v0002") is None
    assert aliases.set("staging", "v0003") == "v0002"  # an alias that exists moves
    assert aliases.set("before-legal", "v0001") is None
    assert aliases.all() == {"production": "v0001", "before-legal": "v0001", "staging": "v0003"}
    assert aliases.by_version() == {"v0001": ["production", "before-legal"], "v0003": ["staging"]}
    assert (aliases.resolve("staging"), aliases.resolve("production"), aliases.resolve("v0002")) == (
        "v0003", "v0001", "v0002")
    for bad in ("v0002", "../up", "", "-x", "a/b"):
        with pytest.raises(InvalidName):
            aliases.set(bad, "v0002")
    with pytest.raises(VersionNotFound):
        aliases.set("qa", "v0099")
    with pytest.raises(AliasNotFound, match="no alias 'nope'"):
        aliases.resolve("nope")
    with pytest.raises(AliasRefused, match="production"):
        aliases.remove("production")
    assert aliases.remove("staging") == "v0003"
    with pytest.raises(AliasNotFound):
        aliases.remove("staging")
    # production is the pointer: setting it activates
    assert aliases.set("production", "v0002") == "v0001"
    assert store.active_id() == "v0002" and aliases.all()["production"] == "v0002"


def test_aliases_in_a_local_store(tmp_path, bert_dir):
    store = ModelStore.open(tmp_path / "store")
    _three_versions(store, bert_dir)
    _aliases_in(store)
    # another process reads the same file
    assert AliasStore(ModelStore.open(tmp_path / "store")).all() == {"production": "v0002", "before-legal": "v0001"}
    # at most MAX_ALIASES stored aliases; moving one is still allowed when full
    aliases = AliasStore(store)
    for i in range(MAX_ALIASES - 1):
        aliases.set(f"a{i}", "v0003")
    with pytest.raises(AliasRefused, match=f"most it keeps \\({MAX_ALIASES}\\)"):
        aliases.set("one-more", "v0003")
    assert aliases.set("a0", "v0001") == "v0003"
    # gc keeps the weights of every version an alias names (v0001: before-legal and a0); once none does, it may go
    assert maintenance.gc(store, keep=1) == []
    assert (aliases.remove("before-legal"), aliases.remove("a0")) == ("v0001", "v0001")
    # a version gc archived cannot be given an alias (it can no longer answer)
    assert maintenance.gc(store, keep=1) == ["v0001"]
    with pytest.raises(AliasRefused, match="archived"):
        aliases.set("old", "v0001")


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def test_aliases_in_an_s3_store(s3_endpoint, redis_url, tmp_path, roberta_dir):
    options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": s3_endpoint,
                                                                  "region_name": "us-east-1"}}
    url = f"s3://{BUCKET}/store-{uuid.uuid4().hex[:8]}"
    store = ModelStore.open(url, redis_url=redis_url, storage_options=options, cache_dir=tmp_path / "a")
    _three_versions(store, roberta_dir)
    _aliases_in(store)
    other = ModelStore.open(url, redis_url=redis_url, storage_options=options, cache_dir=tmp_path / "b")
    assert AliasStore(other).all() == {"production": "v0002", "before-legal": "v0001"}
    assert json.loads(store.backend.read_bytes("ALIASES"))["aliases"] == {"before-legal": "v0001"}


def test_das_alias_set_ls_rm(tmp_path, bert_dir, monkeypatch):
    store = ModelStore.open(tmp_path / "store")
    _three_versions(store, bert_dir)
    monkeypatch.setenv("DAS_WORK_DIR", str(tmp_path / "work"))  # where `production`'s activation keeps job records
    get_settings.cache_clear()
    runner = CliRunner()

    def das(*args: str):
        return runner.invoke(cli, ["alias", *args, "--store", str(tmp_path / "store")])

    try:
        assert das("set", "staging", "v0002").exit_code == 0
        assert das("set", "staging", "v0003").exit_code == 0
        assert das("set", "production", "v0002").exit_code == 0
        listed = das("ls", "--json")
        assert json.loads(listed.stdout) == {"production": "v0002", "staging": "v0003"}
        assert store.active_id() == "v0002"
        assert das("rm", "staging").exit_code == 0
        for args, message in ((("rm", "staging"), "no alias 'staging'"), (("rm", "production"), "cannot be removed"),
                              (("set", "qa", "v0099"), "no version v0099"), (("set", "v0001", "v0001"), "version id")):
            refused = das(*args)
            assert refused.exit_code == 2 and message in refused.output, refused.output
        assert json.loads(das("ls", "--json").stdout) == {"production": "v0002"}
    finally:
        get_settings.cache_clear()


def _embed(client, pin: str | None = None, **body) -> dict:
    """Embeddings of TEXT; `pin`: ?version=; `body`: more fields (the body's `version`)."""
    answer = client.post("/v1/embeddings", params={"version": pin} if pin else {}, json={**TEXT, **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _same(answer: dict, served: dict) -> bool:
    """The same version's embeddings: equal but for what moves within the ONNX parity bounds when a version moves from
    torch to its exported graphs in the background (docs/service.md, "The serving backend")."""
    rest = {k: v for k, v in answer.items() if k != "embeddings"}
    vectors, want = answer["embeddings"], served["embeddings"]
    return rest == {k: v for k, v in served.items() if k != "embeddings"} and len(vectors) == len(want) and \
        all(v == pytest.approx(w, abs=1e-5) for v, w in zip(vectors, want, strict=True))


def _freed(ref: weakref.ref, timeout_s: float = 10.0) -> bool:
    """Whether the object is collected (a thread of the service may hold it a moment longer); the deadline a guard."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        gc.collect()
        if ref() is None:
            return True
        time.sleep(0.05)
    return False


def _loaded(client) -> list[str]:
    return client.get("/v1/models/current").json()["loaded"]


def test_aliases_and_pinned_inference_through_the_service(service_settings, small_corpus, tmp_path):
    settings = service_settings.model_copy(update={"max_loaded_versions": 1})
    source = source_task()
    with TestClient(build_app(settings)) as client:
        service = client.app.state.service
        # a task fitted on v0001, then two adaptations: v0001, v0002, v0003, each served once as the active version
        train, evals = write_jsonl(tmp_path / "train.jsonl", source["train"]), write_jsonl(tmp_path / "eval.jsonl",
                                                                                           source["eval"])
        with open(train, "rb") as t, open(evals, "rb") as e:
            fit = client.post("/v1/tasks", data={"name": "source"}, files={"train": ("train.jsonl", t),
                                                                            "eval": ("eval.jsonl", e)}).json()
        assert wait_for_job(client, fit["job_id"])["state"] == "succeeded"
        served = {"v0001": _embed(client)}
        for version in ("v0002", "v0003"):
            job = wait_for_job(client, upload(client, small_corpus, **SMALL)["job_id"], timeout_s=180)
            assert (job["state"], job["version"]) == ("succeeded", version), job
            wait_serving(client, version)
            served[version] = _embed(client)
        assert [served[v]["version"] for v in served] == ["v0001", "v0002", "v0003"]
        assert served["v0001"]["embeddings"] != served["v0002"]["embeddings"] != served["v0003"]["embeddings"]

        # aliases: set, move, list (production is the active version), shown on each model
        assert client.get("/v1/aliases").json() == {"production": "v0003"}
        assert client.put("/v1/aliases/staging", json={"version": "v0002"}).json()["previous"] is None
        moved = client.put("/v1/aliases/staging", json={"version": "v0001"}).json()
        assert (moved["name"], moved["version"], moved["previous"]) == ("staging", "v0001", "v0002")
        assert client.put("/v1/aliases/before-legal", json={"version": "v0001"}).status_code == 200
        assert client.get("/v1/aliases").json() == {"production": "v0003", "before-legal": "v0001",
                                                    "staging": "v0001"}
        models = {m["id"]: m["aliases"] for m in client.get("/v1/models").json()}
        assert models == {"v0001": ["before-legal", "staging"], "v0002": [], "v0003": ["production"]}
        assert client.get("/v1/models/v0001").json()["aliases"] == ["before-legal", "staging"]

        # pinned inference answers exactly as that version did when it was active: by id, by alias, query or body
        assert _loaded(client) == []
        assert _same(_embed(client, "v0001"), served["v0001"])
        assert _same(_embed(client, version="staging"), served["v0001"])
        assert _same(_embed(client, "staging", version="staging"), served["v0001"])
        assert _same(_embed(client, "production"), served["v0003"]) and _loaded(client) == ["v0001"]
        # at most DAS_MAX_LOADED_VERSIONS=1 other version: v0002 evicts v0001, which answers again by loading again
        evicted = weakref.ref(service.pinned.model("v0001").result())
        assert _same(_embed(client, "v0002"), served["v0002"]) and _loaded(client) == ["v0002"]
        assert _freed(evicted)  # dropped: once no request holds it, nothing does
        assert _same(_embed(client, "before-legal"), served["v0001"]) and _loaded(client) == ["v0001"]
        # while a pinned version loads, the active version answers; requests for the loading one share its one load
        loads, release = [], threading.Event()
        real_load = service.holder.load

        def held_load(version, folder, current):
            loads.append(version)
            release.wait(60)
            return real_load(version, folder, current)

        service.holder.load = held_load
        try:
            waiting = [service.pinned.model("v0002") for _ in range(3)]
            deadline = time.time() + 30
            while not loads and time.time() < deadline:
                time.sleep(0.05)
            assert loads == ["v0002"] and not any(f.done() for f in waiting)
            assert _same(_embed(client), served["v0003"])  # the active version answers before the load ends
            assert not any(f.done() for f in waiting)
            release.set()
            assert len({id(f.result(timeout=60)) for f in waiting}) == 1 and loads == ["v0002"]
        finally:
            release.set()
            service.holder.load = real_load
        assert _same(_embed(client, "v0002"), served["v0002"]) and _loaded(client) == ["v0002"]
        fill = client.post("/v1/fill-mask", params={"version": "v0001"},
                           json={"texts": ["free of [MASK], to any person."]}).json()
        assert fill["version"] == "v0001"
        # a pinned version serves its own task models
        predicted = client.post("/v1/tasks/source/predict?version=staging", json={"texts": [source["heldout"][0][0]]})
        assert predicted.status_code == 200, predicted.text
        assert (predicted.json()["version"], predicted.json()["task_model"]["fitted_on"]) == ("v0001", "v0001")
        both = client.post("/v1/predict", json={"texts": [source["heldout"][0][0]], "version": "v0001"}).json()
        assert (both["version"], both["task_models"]["source"]["fitted_on"]) == ("v0001", "v0001")

        # requests for two versions at once: a batch never mixes them (each answer is its own version's)
        answers: list[tuple[str, dict]] = []

        def ask(version: str) -> None:
            for _ in range(5):
                answers.append((version, _embed(client, version)))

        threads = [threading.Thread(target=ask, args=(v,)) for v in ("v0001", "v0003", "v0001", "v0003")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(answers) == 20 and all(_same(answer, served[version]) for version, answer in answers)

        # refused: unknown alias or version (404 naming it), a bad name, two different versions, archived
        unknown = client.post("/v1/embeddings?version=nightly", json=TEXT)
        assert unknown.status_code == 404 and "nightly" in unknown.json()["detail"]
        assert "v0099" in client.post("/v1/embeddings?version=v0099", json=TEXT).json()["detail"]
        assert client.post("/v1/embeddings?version=../x", json=TEXT).status_code == 422
        both_given = client.post("/v1/embeddings?version=v0001", json={**TEXT, "version": "v0002"})
        assert both_given.status_code == 422 and "differ" in both_given.json()["detail"]
        assert client.put("/v1/aliases/qa", json={"version": "v0099"}).status_code == 404
        assert client.put("/v1/aliases/v0007", json={"version": "v0001"}).status_code == 422
        assert client.delete("/v1/aliases/production").status_code == 409
        assert client.delete("/v1/aliases/before-legal").status_code == 204
        assert client.delete("/v1/aliases/before-legal").status_code == 404

        # setting production is an activation: this process swaps, and the pinned copy is dropped
        activated = client.put("/v1/aliases/production", json={"version": "v0001"})
        assert activated.status_code == 200 and activated.json()["previous"] == "v0003", activated.text
        wait_serving(client, "v0001")
        assert client.get("/v1/aliases").json() == {"production": "v0001", "staging": "v0001"}
        assert _same(_embed(client), served["v0001"]) and _same(_embed(client, "v0003"), served["v0003"])
        assert _loaded(client) == ["v0003"]
        assert client.get("/v1/models/current").json()["aliases"] == ["production", "staging"]
        # a version gc archived no longer answers
        assert maintenance.gc(service.store, keep=1) == ["v0002"]
        archived = client.post("/v1/embeddings?version=v0002", json=TEXT)
        assert archived.status_code == 409 and "archived" in archived.json()["detail"]

    # DAS_MAX_LOADED_VERSIONS=0: only the active version answers, a request for another one says why
    with TestClient(build_app(service_settings.model_copy(update={"max_loaded_versions": 0}))) as client:
        refused = client.post("/v1/embeddings?version=v0003", json=TEXT)
        assert refused.status_code == 409 and "DAS_MAX_LOADED_VERSIONS=0" in refused.json()["detail"]
        assert _same(_embed(client, "production"), served["v0001"])
