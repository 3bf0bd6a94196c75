"""das_client against a real `das serve` (embedded mode, tokens on): upload, wait, predict, fill-mask, embed,
versions, rollback, and errors that carry the server's status and message."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from das_client import (
    Client,
    Conflict,
    InvalidRequest,
    Job,
    JobFailed,
    NotFound,
    Unauthorized,
    Unreachable,
    WaitTimeout,
    progress_line,
)
from das_client.models import from_json
from task_sets import source_task, write_jsonl

from das_settings import get_settings

MGMT, INFER = "client-mgmt", "client-infer"
TINY = {"steps": 2, "batch_size": 2, "max_length": 32, "importance_samples": 4, "importance_batch_size": 2,
        "checkpoint_every": 0}
CLIENT_DIR = Path(__file__).resolve().parents[1] / "client"
T = TypeVar("T")


# -------------------------------------------------------------------------------- a real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(root: Path) -> Iterator[str]:
    """`das serve` on a free loopback port, store and work folder under `root`, both tokens set; yields its URL."""
    port = free_port()
    env = {**os.environ, "DAS_STORE": str(root / "store"), "DAS_WORK_DIR": str(root / "work"),
           "DAS_MODELS_DIR": str(get_settings().models_dir), "DAS_MANAGEMENT_TOKEN": MGMT,
           "DAS_INFERENCE_TOKEN": INFER, "DAS_POLL_INTERVAL_S": "0.5", "DAS_HEARTBEAT_S": "1.0"}
    for name in ("DAS_URL", "DAS_TOKEN", "DAS_BROKER_URL"):
        env.pop(name, None)
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", "from das.cli import app; app()", "serve", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, proc, root / "server.log")
            yield url
        finally:
            proc.terminate()
            proc.wait(30)


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"das serve did not become ready at {url}:\n{log.read_text(errors='replace')[-3000:]}")


def until_served(call: Callable[[], T], timeout_s: float = 90.0) -> T:
    """Call until the server stops answering 409 (a task model is fitted but not loaded yet); a deadline guards."""
    deadline = time.time() + timeout_s
    while True:
        try:
            return call()
        except Conflict:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("client-server")) as url:
        yield url


@pytest.fixture
def das(server) -> Iterator[Client]:
    with Client(server, token=MGMT, timeout=60) as client:
        yield client


@pytest.fixture
def corpus(tmp_path, legal_docs) -> Path:
    path = tmp_path / "legal.txt"
    path.write_text("\n".join(legal_docs[:40]) + "\n", encoding="utf-8")
    return path


# -------------------------------------------------------------------------------- the whole way through
def test_upload_wait_predict_and_roll_back(das, corpus, tmp_path, capsys):
    parent = das.current().id
    assert das.current().mask_token == "[MASK]"

    job = das.upload_corpus(corpus, "legal", **TINY)
    assert isinstance(job, Job) and job.kind == "adapt" and job.domain == "legal"
    assert job.settings["steps"] == 2 and job.corpus_documents == 40
    done = das.wait(job, progress=True, timeout=300)
    assert done.succeeded and done.parent == parent and done.version is not None, done
    shown = capsys.readouterr().err
    assert f"job {job.id[:8]} succeeded" in shown and f"-> {done.version}" in shown
    assert "dispatched" in done.raw  # a field the dataclass does not name is kept

    versions = das.versions()
    assert [v.id for v in versions][-2:] == [parent, done.version]
    adapted = das.version(done.version)
    assert (adapted.parent, adapted.domain, adapted.corpus.documents) == (parent, "legal", 40)
    assert [v.id for v in das.versions(domain="legal")] == [done.version]
    assert [j.id for j in das.jobs(kind="adapt")] == [job.id] and [j.id for j in das.jobs(limit=1)] == [job.id]

    # an older version by id or by alias, while the new one serves
    assert das.set_alias("staging", parent).previous is None
    assert das.aliases() == {"production": done.version, "staging": parent}
    assert das.version(parent).aliases == ["staging"]
    assert das.fill_mask("the licence is [MASK] here", version=parent).version == parent
    assert das.embed("a text", version="staging").version == parent
    das.delete_alias("staging")
    assert "staging" not in das.aliases()

    long_text = "the licence is [MASK] here " + "word " * 700  # over the model's 512 positions
    with pytest.raises(InvalidRequest):
        das.fill_mask(long_text)
    assert das.fill_mask(long_text, truncate=True).truncated == [True]

    sets = source_task(n_train=20, n_eval=10)
    fit = das.register_task("source", write_jsonl(tmp_path / "train.jsonl", sets["train"]),
                            write_jsonl(tmp_path / "eval.jsonl", sets["eval"]))
    assert fit.kind == "fit" and fit.task == "source"
    assert das.wait(fit, progress=False, timeout=300).parent == done.version
    assert [t.name for t in das.tasks()] == ["source"]

    texts = [text for text, _ in sets["heldout"][:3]]
    one = until_served(lambda: das.predict("source", texts))
    assert one.version == done.version and one.task_model.fitted_on == done.version
    assert len(one.results) == 3 and all(r.label in ("code", "licence") for r in one.results)
    assert math.isclose(sum(one.results[0].scores.values()), 1.0, abs_tol=1e-3)
    every = das.predict_all(texts[:2])
    assert set(every.task_models) == {"source"} and every.results[0]["source"].label in ("code", "licence")

    filled = das.fill_mask(["the licence is [MASK] here", "a [MASK] and a [MASK]"], top_k=3)
    assert filled.version == done.version
    assert [len(per_text) for per_text in filled.results] == [1, 2]
    assert len(filled.results[0][0]) == 3 and isinstance(filled.results[0][0][0].token, str)

    embedded = das.embed(["one text", "another text"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == embedded.dimensions
    assert math.isclose(math.fsum(x * x for x in embedded.embeddings[0]), 1.0, rel_tol=1e-3)

    rolled = das.activate(parent)  # source has no model on the parent yet: a fit job is queued for it
    assert rolled.id == parent and len(rolled.fit_jobs) == 1
    assert das.current().id == parent
    assert das.wait(rolled.fit_jobs[0], progress=False, timeout=300).parent == parent
    listed = [j.id for j in das.jobs()]
    assert listed == [rolled.fit_jobs[0], fit.id, job.id]  # newest first
    assert [j.id for j in das.iter_jobs(page_size=1)] == listed  # page after page, by X-Next-Cursor

    das.delete_task("source")
    with pytest.raises(NotFound) as missing:
        das.task("source")
    assert missing.value.status == 404 and "source" in missing.value.detail


# -------------------------------------------------------------------------------- errors
def test_a_refused_upload_carries_the_servers_422_message(das, corpus):
    with pytest.raises(InvalidRequest) as refused:
        das.upload_corpus(corpus, "Not A Domain!", steps=2)
    assert refused.value.status == 422 and "invalid domain name 'Not A Domain!'" in refused.value.detail
    with pytest.raises(InvalidRequest) as invalid:  # FastAPI's own validation: the field is named
        das.fill_mask(["a [MASK]"], top_k=0)
    assert "top_k" in invalid.value.detail


def test_a_wrong_token_is_unauthorized_and_the_inference_token_only_reads(server, monkeypatch):
    with Client(server, token="wrong") as client, pytest.raises(Unauthorized) as refused:
        client.versions()
    assert refused.value.status == 401 and refused.value.detail == "missing or wrong bearer token"
    monkeypatch.setenv("DAS_TOKEN", INFER)  # the token from the environment when none is given
    with Client(server) as reader:
        assert reader.fill_mask("the licence is [MASK] here", top_k=1).results[0][0][0].token
        with pytest.raises(Unauthorized):
            reader.activate("v0001")


def test_waiting_times_out_and_a_cancelled_job_fails_the_wait(das, corpus):
    job = das.upload_corpus(corpus, "legal-long", **{**TINY, "steps": 400})
    with pytest.raises(WaitTimeout) as waited:
        das.wait(job, progress=False, timeout=0)
    assert waited.value.job.state in ("queued", "running")
    assert das.cancel(job).cancel_requested
    with pytest.raises(JobFailed) as failed:
        das.wait(job, progress=False, timeout=300)
    assert failed.value.job.state == "cancelled" and f"job {job.id} ended cancelled" in str(failed.value)
    assert das.wait(job, progress=False, raise_on_failure=False).state == "cancelled"
    with pytest.raises(Conflict) as ended:
        das.cancel(job)
    assert ended.value.status == 409 and "already ended" in ended.value.detail
    with pytest.raises(NotFound, match="no job 00000000"):
        das.job("00000000")
    with pytest.raises(InvalidRequest, match="at least its first 6 characters"):  # a job id or a prefix of one
        das.job("nope")


def test_no_server_is_unreachable():
    with Client(f"http://127.0.0.1:{free_port()}", timeout=5) as client, pytest.raises(Unreachable):
        client.versions()


# -------------------------------------------------------------------------------- the package itself
def test_the_client_depends_on_httpx_only_and_imports_nothing_of_the_service():
    project = tomllib.loads((CLIENT_DIR / "pyproject.toml").read_text())["project"]
    assert project["name"] == "das-client" and [d.split(">")[0] for d in project["dependencies"]] == ["httpx"]
    assert (CLIENT_DIR / "das_client" / "py.typed").exists()
    service = ("das", "api", "worker", "serving", "das_eval", "das_data", "das_engine", "job_records",
               "model_store", "das_settings", "torch", "transformers", "fastapi")
    code = f"import sys, das_client; print(sorted(m for m in sys.modules if m.split('.')[0] in {service!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=CLIENT_DIR)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_the_progress_line_shows_phase_step_loss_and_eta():
    running = from_json(Job, {"id": "3f2a9c1e0000", "state": "running", "progress": {
        "phase": "train", "step": 12, "total": 30, "losses": {"loss": 2.3141}, "eta_s": 41.2}})
    assert progress_line(running) == ("job 3f2a9c1e running train [##########..............] 12/30 "
                                      "loss 2.314 ETA 0:41")
    ended = from_json(Job, {"id": "3f2a9c1e0000", "state": "rejected", "version": "v0003",
                            "error": "forgetting gate rejected v0003"})
    assert progress_line(ended) == "job 3f2a9c1e rejected -> v0003 (forgetting gate rejected v0003)"
