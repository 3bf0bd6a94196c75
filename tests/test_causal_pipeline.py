"""The service's workflows on a causal base (issue #34): a store whose v0001 is a tiny random Llama or GPT-2 (built as
tests/test_causal_engine.py builds them) takes `das task add` and `das adapt --store` (the forgetting gate scores the
registered probe on the causal candidate), `das adapt --nproc 2` trains a Llama as one process does, `das eval` and
`das eval --served` score held-out next-token loss (and say so: `loss_kind`; older results still read as MLM loss),
and an upload through a live `das serve` whose DAS_BASE_MODEL is a causal folder publishes v0002."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file
from service_helpers import das_serve
from task_sets import eval_domains, source_task
from test_causal_engine import causal_tokenizer, gpt2_dir, llama_dir  # noqa: F401 - fixtures used below

from das_engine.loading import lm_kind, load_lm
from das_engine.trainer import adapt
from das_engine.units import UnitTensors, resolve_units
from das_eval.files import loss_kind
from das_formats.config import upload_config
from model_store.store import ModelStore
from model_store.tasks import TaskStore

SMALL = {"steps": 3, "batch_size": 4, "max_length": 32, "lr": 1e-3, "importance_samples": 8,
         "importance_batch_size": 4, "checkpoint_every": 0}


@pytest.fixture(params=["llama", "gpt2"])
def causal_base(request, llama_dir, gpt2_dir) -> Path:  # noqa: F811 - the imported fixtures
    return llama_dir if request.param == "llama" else gpt2_dir


def _flags(values: dict) -> list[str]:
    flags = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return flags


def _das(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`das ARGS` in a process of its own (its settings from `env` over this one's)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DAS_") or k == "DAS_TEST_REDIS_URL"}
    done = subprocess.run([sys.executable, "-m", "das.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**environment, "DAS_TORCH_THREADS": "1", **(env or {})})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
    return path


def _corpus(path: Path, docs: list[str]) -> Path:
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------ the store, the gate, the probes
def test_a_causal_store_adapts_and_the_gate_scores_a_probe_on_the_candidate(causal_base, tmp_path, legal_docs):
    """DAS_BASE_MODEL names a causal folder: `das task add` makes it v0001 (copied as it is) and fits the probe on
    it; `das adapt --store` (adapt_active, the upload's defaults: soft-mask, replay, merge) publishes v0002, whose
    gate scored the registered task on the causal candidate against v0001, and whose probe serves on v0002."""
    store_dir, env = tmp_path / "store", {"DAS_BASE_MODEL": str(causal_base), "DAS_WORK_DIR": str(tmp_path / "w")}
    sets = source_task(n_train=20, n_eval=16)
    _das("task", "add", "source", str(_jsonl(tmp_path / "train.jsonl", sets["train"])), "--eval",
         str(_jsonl(tmp_path / "eval.jsonl", sets["eval"])), "--store", str(store_dir), env=env)
    _das("adapt", str(_corpus(tmp_path / "legal.txt", legal_docs[:40])), "--domain", "legal", "--store",
         str(store_dir), *_flags(SMALL), env=env)

    store = ModelStore.open(store_dir)
    base, child = store.manifest("v0001"), store.manifest("v0002")
    assert base.base_model == str(causal_base) and store.active_id() == "v0002" and child.parent == "v0001"
    assert load_file(str(store.model_dir("v0001") / "model.safetensors")).keys() == \
        load_file(str(causal_base / "model.safetensors")).keys()
    assert lm_kind(store.model_dir("v0002")) == "causal"
    assert child.metrics["kind"] == "causal" and "next_token" in child.metrics["final"]
    assert child.settings["softmask"] and child.settings["replay_fraction"] == 0.25  # the upload's defaults
    gate = child.evaluation["gate"]
    assert gate["unscored"] == [] and not gate["rejected"]
    decision = next(d for d in gate["decisions"] if d["task"] == "source")
    assert decision["reference"]["version"] == "v0001"
    scores = child.evaluation["tasks"]["source"]
    assert 0 <= scores["macro_f1"] <= 100 and scores["n"] == len(sets["eval"])
    tasks = TaskStore(store)
    definition = tasks.definition("source")
    for version in ("v0001", "v0002"):  # fitted by `das task add`, then by the gate (published with the candidate)
        assert tasks.sound_model(version, "source", definition.generation) is not None


def test_probe_features_of_a_causal_lm_are_mean_pooled_last_hidden_states(causal_base):
    """endtask.pooled_features on a causal LM: its decoder stack (`base_model`) runs, padding (EOS where the tokenizer
    has no pad token) is masked out: a text's feature is the same alone and in a batch with a longer one."""
    from das_engine.endtask import pooled_features

    model, tokenizer, kind = load_lm(causal_base)
    assert kind == "causal" and tokenizer.pad_token_id is None  # GPT-2's and this test's tokenizer have none
    texts = ["permission is hereby granted", "the software is provided as is, without warranty of any kind, express"]
    together = pooled_features(model, tokenizer, texts, max_length=64)
    alone = pooled_features(model, tokenizer, texts[:1], max_length=64)
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-4)
    ids = tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        hidden = model.base_model(**ids).last_hidden_state.mean(1)
    torch.testing.assert_close(alone[0], torch.nn.functional.normalize(hidden, dim=-1)[0], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ --nproc
def test_das_adapt_on_two_processes_trains_a_llama_as_one_process_does(llama_dir, tmp_path, legal_docs):  # noqa: F811
    """`das adapt --nproc 2` (torchrun, gloo) on a causal base, the upload's defaults over a given importance: the
    weights of one process (a Llama has no dropout, so the ranks' draws cannot differ)."""
    given = tmp_path / "given.safetensors"
    units = resolve_units(load_lm(llama_dir).model)
    generator = torch.Generator().manual_seed(3)
    UnitTensors.full(units, 0.0).map(lambda t: torch.rand(t.shape, generator=generator) * 0.99).save(given)
    corpus = _corpus(tmp_path / "legal.txt", legal_docs[:60])
    values = {**SMALL, "steps": 4, "lr": 1e-2, "warmup_ratio": 0.0}
    one = adapt(llama_dir, corpus, tmp_path / "one", upload_config(values), prev_importance=given, domain="legal")
    _das("adapt", str(corpus), "--domain", "legal", "--out", str(tmp_path / "two"), "--base", str(llama_dir),
         "--prev-importance", str(given), "--nproc", "2", *_flags(values))
    a, b = load_file(str(one.out_dir / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    start = load_file(str(llama_dir / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3  # trained: equality says something
    metrics = json.loads((tmp_path / "two" / "train_metrics.json").read_text())
    assert metrics["kind"] == "causal" and metrics["tokens"] == one.metrics["tokens"]
    assert metrics["history"][-1]["next_token"] == pytest.approx(one.metrics["history"][-1]["next_token"], rel=1e-4)


# ------------------------------------------------------------------ das eval
def test_das_eval_on_a_causal_base_scores_held_out_next_token_loss(llama_dir, tmp_path):  # noqa: F811
    """Two tiny domains, a causal base: every stage's held-out loss is the next-token loss (the engine's
    `heldout_loss`, equal to scoring the stage's model by hand), recorded as such in scores.json, results.json and
    results.md, and `das eval-merge` keeps it; the probes score the causal stages."""
    from das_engine.mlm_head import heldout_loss
    from das_eval.scoring import heldout_split

    domains = eval_domains(tmp_path / "domains")
    out = tmp_path / "eval"
    _das("eval", *map(str, domains), "--out", str(out), "--methods", "base,ncl,default", "--seeds", "1",
         "--base", str(llama_dir), "--steps", "2", "--batch-size", "4", "--max-length", "32",
         "--importance-samples", "4", "--lr", "5e-3", "--set", "importance_batch_size=4", "--heldout-max", "8")
    results = json.loads((out / "results.json").read_text())
    assert results["loss_kind"] == "next_token"
    stage = out / "runs" / "default" / "seed-0" / "stage-2-legal"
    record = json.loads((stage / "scores.json").read_text())
    assert loss_kind(record) == "next_token" and record["train"]["settings"]["softmask"]
    documents = (domains[0] / "corpus.txt").read_text(encoding="utf-8").splitlines()
    heldout, _ = heldout_split(documents, 0.05, 8)
    model, tokenizer, _ = load_lm(stage)
    by_hand = heldout_loss(model, tokenizer, heldout, max_length=32, batch_size=32, seed=0)
    assert record["scores"]["code"]["mlm_loss"] == pytest.approx(by_hand, rel=1e-5)
    losses = results["scores"]["ncl"]["0"]["mlm_loss"]
    assert losses[0] != losses[1] != losses[2]  # trained: the loss moved
    assert 0 <= results["scores"]["default"]["0"]["probe/macro_f1"][2][1] <= 100
    text = (out / "results.md").read_text()
    assert "Held-out next-token loss" in text and "MLM" not in text.split("## Commands")[0]
    merged = tmp_path / "merged"
    _das("eval-merge", str(out / "results.json"), "--out", str(merged))
    assert json.loads((merged / "results.json").read_text())["loss_kind"] == "next_token"


def test_the_served_view_on_a_causal_base_gates_and_gains_in_next_token_loss(llama_dir, tmp_path):  # noqa: F811
    """`das eval --served` on a causal base: each upload goes through the service's path (the second is gated on the
    first domain's registered probe), and the gains are in held-out next-token loss, said so in served.json."""
    domains = eval_domains(tmp_path / "domains")
    out = tmp_path / "served"
    _das("eval", *map(str, domains), "--out", str(out), "--served", "--methods", "default", "--seeds", "1",
         "--base", str(llama_dir), "--steps", "2", "--batch-size", "4", "--max-length", "32",
         "--importance-samples", "4", "--lr", "5e-3", "--set", "importance_batch_size=4", "--heldout-max", "8")
    results = json.loads((out / "served.json").read_text())
    assert results["loss_kind"] == "next_token"
    first, second = results["methods"]["default"]["seeds"]["0"]["stages"]
    assert first["loss_kind"] == second["loss_kind"] == "next_token"
    assert [d["task"] for d in second["gate"]["decisions"]] == ["code"] and second["gate"]["unscored"] == []
    assert set(second["served"]) == {"code", "legal"}
    assert "held-out next-token loss" in (out / "served.md").read_text()


def test_results_written_before_causal_lms_are_read_as_mlm_loss(tmp_path):
    """A results.json `das eval` wrote before `loss_kind` existed merges as before, and its report names the MLM
    loss; a results.json of a causal base does not merge with one of a masked base."""
    old = Path(__file__).parents[1] / "bench" / "results" / "eval29-embedded-seed0-results.json"
    assert "loss_kind" not in json.loads(old.read_text())
    _das("eval-merge", str(old), "--out", str(tmp_path / "merged"))
    assert "## Held-out MLM loss" in (tmp_path / "merged" / "results.md").read_text()
    causal = json.loads(old.read_text()) | {"loss_kind": "next_token"}
    (tmp_path / "causal.json").write_text(json.dumps(causal))
    done = subprocess.run([sys.executable, "-m", "das.cli", "eval-merge", str(old), str(tmp_path / "causal.json"),
                           "--out", str(tmp_path / "both")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "loss_kind: \"mlm\" -> \"next_token\"" in done.stdout + done.stderr


# ------------------------------------------------------------------ an upload through the service
def test_an_upload_to_a_service_on_a_causal_base_publishes_v0002(tmp_path, llama_dir, legal_docs):  # noqa: F811
    """`das serve` with DAS_BASE_MODEL a causal folder: v0001 is that model, and POST /v1/corpora adapts it (the job
    process, the upload's defaults) into v0002, swapped in."""
    models = tmp_path / "models"
    models.mkdir()
    server, url = das_serve(tmp_path / "store", tmp_path / "work", models, log=tmp_path / "serve.log",
                            extra_env={"DAS_BASE_MODEL": str(llama_dir)})
    try:
        corpus = _corpus(tmp_path / "legal.txt", legal_docs[:40])
        with open(corpus, "rb") as f:
            response = httpx.post(f"{url}/v1/corpora", files={"file": ("legal.txt", f, "text/plain")},
                                  data={"domain": "legal", **{k: str(v) for k, v in SMALL.items()}}, timeout=60)
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        job = _wait(url, job_id)
        assert job["state"] == "succeeded", job
        assert job["version"] == "v0002"
        version = httpx.get(f"{url}/v1/models/v0002", timeout=30).json()
        assert version["parent"] == "v0001" and version["metrics"]["kind"] == "causal"
        assert "next_token" in version["metrics"]["final"]
    finally:
        server.terminate()
        server.wait(30)
    assert lm_kind(tmp_path / "store" / "versions" / "v0002") == "causal"


def _wait(url: str, job_id: str, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    job: dict = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
        if job["state"] in ("succeeded", "failed", "cancelled", "rejected"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s: {job}")


def test_a_gpt2s_positions_bound_what_uploads_and_probes_read(gpt2_dir):  # noqa: F811
    """GPT-2's config.json says `n_positions` where the others say `max_position_embeddings`: an upload's max_length
    is checked against it, and probes truncate to it."""
    from das_engine.endtask import served_max_tokens
    from das_formats.config import model_max_length

    config = json.loads((gpt2_dir / "config.json").read_text())
    assert "max_position_embeddings" not in config and model_max_length(config) == 128
    assert served_max_tokens(load_lm(gpt2_dir).model.config) == 128
