"""`wait()` can mean serving (issue #33): `Client.wait(job, serving=True)` and `das watch --serving` return once the
server answers with the job's new version, so the next request is answered by it; off a terminal the watch writes a
line per phase and ends with the seconds of each phase."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from das_client import Client
from test_client import MGMT, TINY, running_server

from pipeline.adaptation import PHASES


def _phase(line: str) -> str:
    """The phase a 'job ID running PHASE [...] ...' line names."""
    return line.split()[3]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("serving-server")) as url:
        yield url


@pytest.fixture
def corpus(tmp_path, legal_docs) -> Path:
    path = tmp_path / "legal.txt"
    path.write_text("\n".join(legal_docs[:40]) + "\n", encoding="utf-8")
    return path


def test_wait_serving_returns_once_the_new_version_answers(server, corpus, capsys):
    with Client(server, token=MGMT, timeout=60) as das:
        job = das.upload_corpus(corpus, "legal", **TINY)
        done = das.wait(job, progress=True, timeout=300, serving=True, progress_every_s=1)
        # no retry, no pause: the very next requests are answered by the new version
        assert das.fill_mask("the licence is [MASK] here").version == done.version
        assert das.embed("a text").version == done.version
        assert das.readiness()["version"] == done.version
    shown = capsys.readouterr().err.splitlines()
    assert shown[-1] == f"job {job.id[:8]} serving {done.version}"
    phases = [_phase(line) for line in shown if line.startswith(f"job {job.id[:8]} running ")]
    # a line per phase it saw (a phase shorter than a poll, such as a 2-step training on a busy machine, may show none;
    # tests/test_job_progress.py checks the lines phase by phase)
    assert phases and set(phases) <= set(PHASES), phases
    assert list(done.phases_s)[:2] == ["queued", "prepare"]
    assert {"train", "gate", "publish", "activate"} <= set(done.phases_s)


def test_das_watch_serving_off_a_terminal(server, corpus):
    with Client(server, token=MGMT, timeout=60) as das:
        before = das.upload_corpus(corpus, "legal-before", **TINY)
        job = das.upload_corpus(corpus, "legal-again", **TINY)
        queued = das.job(job.id[:8])  # (any unique prefix of 6 characters or more names a job)
        assert queued.state == "queued" and before.id[:8] in queued.waiting_for, queued.waiting_for
        env = {**os.environ, "DAS_URL": server, "DAS_TOKEN": MGMT, "DAS_PROGRESS_EVERY_S": "1"}
        watched = subprocess.run([sys.executable, "-m", "das.cli", "watch", job.id, "--serving", "--timeout", "300"],
                                 capture_output=True, text=True, env=env, timeout=400)
        assert watched.returncode == 0, watched.stderr
        version = das.job(job.id).version
        assert das.fill_mask("the licence is [MASK] here").version == version
    lines = watched.stderr.splitlines()
    assert f"job {job.id[:8]} serving {version}" in lines
    assert any(line.startswith("  phases: queued ") and " train " in line for line in lines)
    running = [_phase(line) for line in lines if line.startswith(f"job {job.id[:8]} running ")]
    assert running and set(running) <= set(PHASES)  # phase lines, off a terminal


def test_a_version_no_longer_active_is_not_waited_for(server, corpus):
    """The first upload's version was replaced by a later one: serving=True returns with the job, not at its
    timeout (the server will never answer with that version unless someone activates it)."""
    with Client(server, token=MGMT, timeout=60) as das:
        first = das.jobs(kind="adapt")[-1]
        assert das.version(first.version).status != "active"
        assert das.wait(first.id, progress=False, serving=True, timeout=30).succeeded
