"""One intake for corpora (pipeline.corpus_intake): `das adapt --store` refuses what POST /v1/corpora refuses, with
the same message, and neither stores anything of what it refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from das.app import build_app
from das.cli import app
from das_settings import Settings, get_settings

MGMT = "m-secret"
LIMITS = {"max_upload_bytes": 4096, "max_steps": 1000, "max_train_length": 256}
DOC = b"a real document about licences and their terms\nanother document, about notices\n"
runner = CliRunner()

# (file name, its bytes, the settings sent, what the refusal says): the class of what an upload can get wrong
REFUSED = [
    ("c.txt", "café au lait\n".encode("latin-1"), {}, "c.txt: not UTF-8"),
    ("c.txt", b"", {}, "the uploaded file is empty"),
    ("c.txt", b"\x00\x01binary\x00", {}, "looks binary"),
    ("c.txt", b"\n \n", {}, "no documents"),
    ("c.jsonl", b'{"text": "ok"}\n{"body": 1}\n', {}, "line 2 has no string field 'text'"),
    ("c.txt", b"word " * 2000, {}, "the corpus exceeds the upload limit of 4096 bytes (DAS_MAX_UPLOAD_BYTES)"),
    ("c.txt", DOC, {"domain": "../evil"}, "invalid domain"),
    ("c.txt", DOC, {"steps": "0"}, "DASConfig.steps must be >= 1"),
    ("c.txt", DOC, {"steps": "5000"}, "steps=5000 exceeds the limit of 1000 (set by DAS_MAX_STEPS)"),
    ("c.txt", DOC, {"max_length": "300"}, "(set by DAS_MAX_TRAIN_LENGTH)"),
    ("c.txt", DOC, {"lr": "-1"}, "lr"),
    ("c.txt", b"the same document\nthe same document\n", {"merge_auto": "true"}, "distinct document(s)"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("intake-api")
    settings = Settings(store=str(root / "store"), work_dir=root / "work", models_dir=get_settings().models_dir,
                        management_token=MGMT, **LIMITS)
    with TestClient(build_app(settings)) as c:
        yield c


def _cli_args(settings: dict[str, str]) -> list[str]:
    args = ["--domain", settings.get("domain", "legal")]
    for name, value in settings.items():
        if name == "domain":
            continue
        flag = "--" + name.replace("_", "-")
        args += [flag] if value == "true" else [flag, value]
    return args


@pytest.mark.parametrize("filename,content,settings,message", REFUSED, ids=[m for *_, m in REFUSED])
def test_the_cli_refuses_what_the_api_refuses_with_the_same_message(client, tmp_path, monkeypatch, filename, content,
                                                                    settings, message):
    form = {"domain": "legal", **settings}
    response = client.post("/v1/corpora", files={"file": (filename, content, "text/plain")}, data=form,
                           headers={"Authorization": f"Bearer {MGMT}"})
    assert response.status_code in (413, 422) and message in response.json()["detail"], response.text
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {MGMT}"}).json() == []

    corpus = tmp_path / filename
    corpus.write_bytes(content)
    store = tmp_path / "store"
    for name, value in LIMITS.items():
        monkeypatch.setenv(f"DAS_{name.upper()}", str(value))
    monkeypatch.setenv("DAS_WORK_DIR", str(tmp_path / "work"))
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["adapt", str(corpus), "--store", str(store), *_cli_args(settings)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output  # the console wraps long lines
    stored = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    assert not any(p.startswith("corpora") or "v0002" in p for p in stored), stored  # nothing of it was kept
    assert not (Path(tmp_path / "work")).exists() or not any((tmp_path / "work").rglob("*.safetensors"))
