"""The ONNX serving backend: the exported graphs answer as torch does (parity), the service moves a version onto them
in the background without a swap waiting, and anything wrong with a graph leaves torch answering."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from task_sets import source_task
from typer.testing import CliRunner

from das.cli import app
from das_engine.endtask import ProbeConfig, fit_probe
from das_engine.onnx_export import GRAPH, HEAD_GRAPH, MAX_LOGIT_DIFF, MIN_COSINE, PARITY, export_folder
from serving.model import LoadedModel
from serving.onnx_cache import OnnxCache, weights_digest

SCORE_TOLERANCE = 1e-3


@pytest.fixture(scope="module", params=["bert", "roberta"])
def exported(request, bert_dir, roberta_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, its export folder): each family exported once for the module."""
    folder = bert_dir if request.param == "bert" else roberta_dir
    out = tmp_path_factory.mktemp(f"onnx-{request.param}") / "graphs"
    parity = export_folder(folder, out)
    assert parity.ok, parity
    return folder, out


@pytest.fixture(scope="module")
def bert_graphs(bert_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx-bert") / "graphs"
    assert export_folder(bert_dir, out).ok
    return out


def _both(folder: Path, graphs: Path) -> tuple[LoadedModel, LoadedModel]:
    torch_model = LoadedModel.load("v", folder)
    onnx_model = LoadedModel.load("v", folder)
    onnx_model.runs.move_to(graphs)
    assert (torch_model.backend, onnx_model.backend) == ("torch", "onnx")
    return torch_model, onnx_model


def test_the_export_writes_both_graphs_and_a_passing_parity_record(exported):
    _, out = exported
    record = json.loads((out / PARITY).read_text())
    assert (out / GRAPH).is_file() and (out / HEAD_GRAPH).is_file()
    assert record["ok"] is True and record["same_top_k"] is True
    assert record["max_logit_diff"] <= MAX_LOGIT_DIFF and record["min_cosine"] >= MIN_COSINE


def test_fill_mask_gives_the_same_tokens_and_scores_within_1e_3(exported):
    folder, graphs = exported
    ours, theirs = _both(folder, graphs)
    mask = ours.mask_token
    texts = [f"{text[:200]} {mask} and {mask}." for text, _ in source_task()["eval"][:24]] + [mask]
    for top_k in (1, 5, 50):
        a, b = ours.fill_mask(texts, top_k), theirs.fill_mask(texts, top_k)
        for per_text_a, per_text_b in zip(a, b, strict=True):
            for cands_a, cands_b in zip(per_text_a, per_text_b, strict=True):
                assert [c["token_id"] for c in cands_a] == [c["token_id"] for c in cands_b]
                assert [c["score"] for c in cands_a] == pytest.approx([c["score"] for c in cands_b],
                                                                      abs=SCORE_TOLERANCE)


def test_embeddings_and_task_labels_match_on_a_test_set(exported):
    folder, graphs = exported
    ours, theirs = _both(folder, graphs)
    task = source_task()
    train_texts, train_labels = zip(*task["train"], strict=True)
    head = fit_probe(torch.tensor(ours.embed(list(train_texts))), list(train_labels), ["code", "licence"],
                     ProbeConfig())
    eval_texts = [text for text, _ in task["eval"]]
    a, b = torch.tensor(ours.embed(eval_texts)), torch.tensor(theirs.embed(eval_texts))
    assert (a * b).sum(-1).min().item() >= MIN_COSINE
    with torch.inference_mode():
        assert torch.equal(head(a).argmax(-1), head(b).argmax(-1))


def test_a_version_moves_to_onnx_in_the_background_and_a_second_load_starts_on_it(bert_dir, tmp_path, caplog):
    folder = tmp_path / "v1"
    shutil.copytree(bert_dir, folder)
    cache = OnnxCache(tmp_path / "onnx")
    first = LoadedModel.load("v1", folder, onnx=cache)
    assert first.backend == "torch"  # the load did not wait for the export
    answer = first.embed(["answered while the export runs"])
    deadline = time.monotonic() + 300
    while first.backend != "onnx" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.backend == "onnx"
    assert first.with_tasks(first.tasks).backend == "onnx"  # copies share the slot
    assert torch.tensor(first.embed(["answered while the export runs"])) @ torch.tensor(answer).T >= MIN_COSINE
    second = LoadedModel.load("v1", folder, onnx=cache)
    assert second.backend == "onnx"  # the cache holds the graphs of these weights
    assert [p.name for p in (tmp_path / "onnx").iterdir() if not p.name.startswith(".")] == \
        [weights_digest(folder)[:32]]


@pytest.mark.parametrize("damage", ["failed parity", "unreadable graph", "no parity record"])
def test_a_damaged_or_failed_export_leaves_torch_answering(bert_dir, bert_graphs, tmp_path, damage):
    """A failed parity check is final (torch serves those weights); a graph that does not open leaves torch serving;
    graphs without their parity record (not written by an export: it renames both into place at once) are
    exported again."""
    folder, graphs = bert_dir, bert_graphs
    cache = OnnxCache(tmp_path / "onnx")
    entry = cache.entry(folder)
    shutil.copytree(graphs, entry)
    if damage == "failed parity":
        record = json.loads((entry / PARITY).read_text())
        (entry / PARITY).write_text(json.dumps({**record, "ok": False}))
    elif damage == "unreadable graph":
        (entry / GRAPH).write_bytes(b"not a graph")
    else:
        (entry / PARITY).unlink()
    model = LoadedModel.load("v", folder, onnx=cache)
    assert model.backend == "torch"
    assert model.fill_mask([f"a {model.mask_token} b"], 3)[0][0]
    deadline = time.monotonic() + 300
    while damage == "no parity record" and model.backend == "torch" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert model.backend == ("onnx" if damage == "no parity record" else "torch")


def test_das_export_writes_the_graphs_and_refuses_an_existing_folder(service_settings, tmp_path):
    from das_data.base_models import ensure_initialised
    from worker.runtime import open_store

    store = ["--store", service_settings.store]
    ensure_initialised(open_store(location=service_settings.store), service_settings)
    out = tmp_path / "exported"
    done = CliRunner().invoke(app, ["export", "v0001", "--format", "onnx", "--out", str(out), *store])
    assert done.exit_code == 0, done.output
    assert json.loads((out / PARITY).read_text())["ok"] is True and (out / GRAPH).is_file()
    assert "onnxruntime" in done.output
    again = CliRunner().invoke(app, ["export", "v0001", "--out", str(out), *store])
    assert again.exit_code == 2 and "exists" in again.output
    missing = CliRunner().invoke(app, ["export", "v0042", "--out", str(tmp_path / "other"), *store])
    assert missing.exit_code == 2 and "v0042" in missing.output


def test_the_service_answers_at_once_moves_to_onnx_and_answers_as_torch_did(service_settings, bert_dir, tmp_path):
    from fastapi.testclient import TestClient

    from das.app import build_app

    settings = service_settings.model_copy(update={"onnx_cache_dir": tmp_path / "onnx"})
    body = {"texts": ["The contract is [MASK] by both parties.", "[MASK] is a function."], "top_k": 5}
    with TestClient(build_app(settings)) as client:
        ready = client.get("/readyz").json()
        before = client.post("/v1/fill-mask", json=body)
        assert before.status_code == 200, before.text
        deadline = time.monotonic() + 300
        while ready.get("backend") != "onnx" and time.monotonic() < deadline:
            time.sleep(0.3)
            ready = client.get("/readyz").json()
        assert ready["backend"] == "onnx", ready
        after = client.post("/v1/fill-mask", json=body).json()["results"]
    for text_a, text_b in zip(before.json()["results"], after, strict=True):
        for a, b in zip(text_a, text_b, strict=True):
            assert [c["token"] for c in a] == [c["token"] for c in b]
            assert [c["score"] for c in a] == pytest.approx([c["score"] for c in b], abs=SCORE_TOLERANCE)
