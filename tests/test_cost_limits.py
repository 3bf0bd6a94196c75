"""Cost is bounded before work starts (issue #8, class 2): every training setting has a limit that an
upload meets before anything is stored, and one inference request's tokens, mask tokens and forward
passes are bounded."""

from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import wait

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForMaskedLM

from das.app import build_app
from das_formats.config import (
    ConfigLimits,
    DASConfig,
    LimitError,
    check_limits,
    model_max_length,
    setting_fields,
)
from das_settings import Settings, get_settings
from serving.batcher import MicroBatcher
from serving.errors import InputError
from serving.holder import ModelHolder
from serving.model import LoadedModel

MGMT = "m-secret"
DOC = b"a real document about licences and the software they cover\nanother document\n"


def _limits(settings: Settings, model: int | None = None) -> ConfigLimits:
    return ConfigLimits(max_steps=settings.max_steps, max_batch_size=settings.max_train_batch_size,
                        max_length=settings.max_train_length, max_tokens_per_batch=settings.max_train_tokens_per_batch,
                        max_importance_samples=settings.max_importance_samples, model_max_length=model)


def _refused(**values) -> bool:
    """The value is refused by DASConfig itself or by the default limits of the service."""
    try:
        check_limits(DASConfig(**values), _limits(Settings(), model=512))
    except ValueError:  # LimitError is a ValueError too
        return True
    return False


@pytest.mark.parametrize("f", [f for f in setting_fields() if f.type in (int, float)], ids=lambda f: f.name)
def test_every_numeric_training_setting_has_bounds(f):
    """A field added to DASConfig without a bound fails here."""
    assert not _refused(**{f.name: f.default} if f.default is not None else {})
    assert _refused(**{f.name: -1})
    if f.type is int:
        assert _refused(**{f.name: 10**12})
    else:
        for value in (math.nan, math.inf, -math.inf):
            assert _refused(**{f.name: value}), value
        if f.name != "max_grad_norm":  # clipping at any finite norm > 0 means something
            assert _refused(**{f.name: 1e12})


def test_limit_errors_name_the_field_the_value_and_the_limit():
    limits = ConfigLimits(max_steps=100, max_batch_size=8, max_length=64, max_tokens_per_batch=256,
                          max_importance_samples=32, model_max_length=40)
    small = {"steps": 10, "batch_size": 2, "importance_batch_size": 2, "max_length": 32, "importance_samples": 8}
    for values, message in [
        ({"steps": 101}, "steps=101 exceeds the limit of 100"),
        ({"batch_size": 9}, "batch_size=9 exceeds the limit of 8"),
        ({"importance_batch_size": 9}, "importance_batch_size=9 exceeds the limit of 8"),
        ({"importance_samples": 33}, "importance_samples=33 exceeds the limit of 32"),
        ({"max_length": 65}, "max_length=65 exceeds the limit of 64"),
        ({"max_length": 48}, "max_length=48 exceeds the limit of 40 (the tokens the model's position embeddings"),
        ({"batch_size": 8, "max_length": 36}, "batch_size * max_length=288 exceeds the limit of 256 tokens"),
        ({"importance_batch_size": 8, "max_length": 36}, "importance_batch_size * max_length=288 exceeds"),
        ({"checkpoint_every": 101}, "checkpoint_every=101 exceeds the limit of 100"),
        ({"log_every": 101}, "log_every=101 exceeds the limit of 100"),
    ]:
        with pytest.raises(LimitError) as err:
            check_limits(DASConfig(**{**small, **values}), limits)
        assert message in str(err.value), (values, str(err.value))
    check_limits(DASConfig(batch_size=8, importance_batch_size=8, max_length=32, steps=100, importance_samples=32),
                 limits)  # at every limit: accepted


def test_the_model_limit_is_what_its_position_embeddings_hold(bert_dir, roberta_dir):
    """BERT uses all its positions; RoBERTa starts after padding_idx: the limit is the longest input that runs."""
    for folder in (bert_dir, roberta_dir):
        config = json.loads((folder / "config.json").read_text())
        limit = model_max_length(config)
        expected = config["max_position_embeddings"] - (config["pad_token_id"] + 1 if config["model_type"] == "roberta"
                                                        else 0)
        assert limit == expected
        model = AutoModelForMaskedLM.from_pretrained(folder).eval()
        ids = torch.full((1, limit), 5)
        with torch.inference_mode():
            model(input_ids=ids)  # the limit fits
            with pytest.raises((IndexError, RuntimeError)):
                model(input_ids=torch.full((1, limit + 1), 5))  # one more does not
    assert model_max_length({"model_type": "bert"}) is None


# ---------------------------------------------------------------------------------------------- uploads
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost-limits")
    settings = Settings(store=str(root / "store"), work_dir=root / "work", models_dir=get_settings().models_dir,
                        management_token=MGMT, max_steps=1000, max_train_batch_size=64, max_train_length=4096,
                        max_train_tokens_per_batch=8192, max_importance_samples=512, max_request_tokens=200,
                        max_masks_per_request=8, max_wait_ms=2.0)
    with TestClient(build_app(settings)) as c:
        yield c


def _auth():
    return {"Authorization": f"Bearer {MGMT}"}


def _upload(client, content: bytes = DOC, **form):
    return client.post("/v1/corpora", files={"file": ("c.txt", content, "text/plain")},
                       data={"domain": "legal", **form}, headers=_auth())


@pytest.mark.parametrize("form,message", [
    ({"batch_size": "1000000000"}, "batch_size=1000000000 exceeds the limit of 64 (set by DAS_MAX_TRAIN_BATCH_SIZE)"),
    ({"steps": "1001"}, "steps=1001 exceeds the limit of 1000 (set by DAS_MAX_STEPS)"),
    ({"importance_samples": "513"}, "importance_samples=513 exceeds the limit of 512"),
    ({"importance_batch_size": "65"}, "importance_batch_size=65 exceeds the limit of 64"),
    ({"max_length": "513", "batch_size": "2", "importance_batch_size": "2"},
     "max_length=513 exceeds the limit of 512 (the tokens the model's position embeddings hold)"),
    ({"max_length": "256", "batch_size": "64"}, "batch_size * max_length=16384 exceeds the limit of 8192"),
    ({"log_every": "5000"}, "log_every=5000 exceeds the limit of 1000"),
    ({"lr": "2"}, "lr must be in (0, 1]"),
    ({"lr": "nan"}, "lr must be in (0, 1]"),
    ({"weight_decay": "inf"}, "weight_decay must be within 0..1"),
    ({"temperature": "1000"}, "temperature must be within 0.001..10"),
    ({"contrastive_weight": "1e9"}, "contrastive_weight must be within 0..100"),
    ({"max_grad_norm": "-inf"}, "max_grad_norm must be a finite number > 0"),
    ({"seed": str(2**40)}, "seed must be within 0.."),
])
def test_an_upload_over_a_limit_is_422_before_anything_is_stored(client, form, message):
    service = client.app.state.service
    content = DOC + repr(form).encode() + b"\n"  # bytes of its own: nothing may store them
    before = [j["id"] for j in client.get("/v1/jobs", headers=_auth()).json()]
    response = _upload(client, content, **form)
    assert response.status_code == 422 and message in response.json()["detail"], response.text
    assert not service.store.blobs.has(hashlib.sha256(content).hexdigest())
    assert [j["id"] for j in client.get("/v1/jobs", headers=_auth()).json()] == before
    uploads = service.settings.work_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_settings_within_the_limits_are_accepted(client):
    response = _upload(client, max_length="512", batch_size="16", importance_batch_size="16", steps="1000")
    assert response.status_code == 202, response.text
    client.delete(f"/v1/jobs/{response.json()['job_id']}", headers=_auth())


def test_a_roberta_model_reserves_padding_positions(service_settings, roberta_dir):
    """The limit comes from the active version's config.json: 140 positions, padding_idx 1: 138 tokens."""
    settings = service_settings.model_copy(update={"base_model": str(roberta_dir), "max_train_length": 4096})
    with TestClient(build_app(settings)) as c:
        refused = _upload(c, max_length="139", batch_size="2", importance_batch_size="2")
        assert refused.status_code == 422 and "max_length=139 exceeds the limit of 138" in refused.text
        accepted = _upload(c, max_length="138", batch_size="2", importance_batch_size="2", steps="1")
        assert accepted.status_code == 202, accepted.text
        c.delete(f"/v1/jobs/{accepted.json()['job_id']}")


# -------------------------------------------------------------------------------------------- inference
def test_a_request_full_of_mask_tokens_is_refused_at_the_edge(service_settings, monkeypatch):
    """The reported case: 64 texts full of mask tokens (was 40 s, 8 GB and an 81 MB answer): a small, fast 422."""
    with TestClient(build_app(service_settings)) as c:
        texts = [("[MASK] " * 570)[:3990] for _ in range(64)]
        batcher = c.app.state.service.batcher
        with monkeypatch.context() as m:
            m.setattr(batcher, "submit", lambda *a, **k: pytest.fail("the request reached the model"))
            response = c.post("/v1/fill-mask", json={"texts": texts, "top_k": 50})
        assert response.status_code == 422 and "holds 36480 mask tokens" in response.text
        assert "the limit is 256 per request (DAS_MAX_MASKS_PER_REQUEST)" in response.text
        assert len(response.content) < 1000
        assert c.post("/v1/fill-mask", json={"texts": ["[MASK] " * 256]}).status_code == 200


@pytest.mark.parametrize("route", ["/v1/fill-mask", "/v1/embeddings"])
def test_the_tokens_of_a_request_are_bounded(client, route):
    text = "permission is hereby granted to any person obtaining a copy of this software and documentation " * 3
    text += "[MASK]"  # 51 tokens with [CLS] and [SEP]: 3 texts are 153 tokens, 4 are 204
    ok = client.post(route, json={"texts": [text] * 3}, headers=_auth())
    assert ok.status_code == 200, ok.text
    response = client.post(route, json={"texts": [text] * 4}, headers=_auth())
    assert response.status_code == 422, response.text
    assert "tokens; the limit is 200 per request (DAS_MAX_REQUEST_TOKENS)" in response.json()["detail"]


def test_mask_tokens_are_counted_at_the_edge_and_after_tokenising(client, bert_dir):
    response = client.post("/v1/fill-mask", json={"texts": ["[MASK] " * 5, "a [MASK] " * 4]}, headers=_auth())
    assert response.status_code == 422 and "holds 9 mask tokens; the limit is 8" in response.text
    ok = client.post("/v1/fill-mask", json={"texts": ["[MASK] " * 4, "a [MASK] " * 4], "top_k": 2}, headers=_auth())
    assert ok.status_code == 200 and [len(r) for r in ok.json()["results"]] == [4, 4]
    # serving counts the mask tokens the model sees, whatever the edge counted
    holder = ModelHolder(resolve=lambda version: bert_dir, load=LoadedModel.load)
    holder.ensure("v0001")
    batcher = MicroBatcher(holder, max_batch_size=8, max_wait_s=0.0, queue_size=4)
    batcher.start()
    try:
        with pytest.raises(InputError, match="holds 3 mask tokens; the limit is 2"):
            batcher.submit("fill_mask", ["[MASK] [MASK]", "a [MASK]"], max_masks=2).result(timeout=30)
        with pytest.raises(InputError, match="tokens; the limit is 10"):
            batcher.submit("embed", ["one two three four five six seven eight nine ten"], max_tokens=10).result(30)
    finally:
        batcher.stop()


# ------------------------------------------------------------------------------------------ micro-batches
@pytest.fixture
def counted_batcher(bert_dir):
    """A batcher of at most 4 texts per forward pass that records the size of every forward pass."""
    holder = ModelHolder(resolve=lambda version: bert_dir, load=LoadedModel.load)
    holder.ensure("v0001")
    model, passes = holder.current, []
    for name in ("embed", "fill_mask"):
        real = getattr(model, name)

        def recorded(texts, *args, _real=real):
            passes.append(len(texts))
            return _real(texts, *args)

        setattr(model, name, recorded)
    batcher = MicroBatcher(holder, max_batch_size=4, max_wait_s=0.3, queue_size=16)  # a long wait: one batch
    batcher.start()
    yield batcher, model, passes
    batcher.stop()


def test_a_request_larger_than_a_batch_runs_in_chunks(counted_batcher):
    batcher, model, passes = counted_batcher
    texts = [f"document number {i} about licences" for i in range(10)]
    version, vectors = batcher.submit("embed", texts).result(timeout=60)
    assert passes == [4, 4, 2] and len(vectors) == 10
    passes.clear()
    alone = [model.embed([t])[0] for t in texts]
    assert torch.allclose(torch.tensor(vectors), torch.tensor(alone), atol=1e-5)  # each answer is its own text's
    fill = [f"text {i} is [MASK] here" for i in range(6)]
    _, answers = batcher.submit("fill_mask", fill, 2).result(timeout=60)
    assert len(answers) == 6 and all(len(a) == 1 and len(a[0]) == 2 for a in answers)


def test_requests_are_never_merged_into_a_batch_larger_than_its_size(counted_batcher):
    batcher, _, passes = counted_batcher
    futures = [batcher.submit("embed", [f"request {r} text {i}" for i in range(3)]) for r in range(4)]
    wait(futures, timeout=60)
    assert [len(f.result()[1]) for f in futures] == [3, 3, 3, 3]
    assert passes == [3, 3, 3, 3]  # 3 + 3 > 4: each request opens the next batch, none is cut across two


def _recording_batcher(bert_dir, **kw):
    holder = ModelHolder(resolve=lambda version: bert_dir, load=LoadedModel.load)
    holder.ensure("v0001")
    model, passes = holder.current, []
    real = model.embed

    def recorded(texts, *args):
        passes.append(len(texts))
        return real(texts, *args)

    model.embed = recorded
    batcher = MicroBatcher(holder, queue_size=64, **kw)
    batcher.start()
    return batcher, passes


def test_under_load_a_batch_gathers_the_rest_of_the_burst_and_a_lone_client_never_waits(bert_dir):
    """The gathering window is an hour here, so what is asserted does not depend on how fast the
    machine is: a lone request that waited for it would not be answered at all (the result's timeout
    is only a liveness guard), and a burst is gathered into one batch however slowly it arrives."""
    import threading

    batcher, passes = _recording_batcher(bert_dir, max_batch_size=64, max_wait_s=0.0, gather_s=3600.0)
    try:
        batcher.submit("embed", ["a lone request"]).result(timeout=60)  # the last batch held no burst: no wait
        assert passes == [1]
        batcher.last_requests = 8  # as if the last batch had answered 8 clients, now sending again

        def later(i: int) -> None:
            time.sleep(0.05 * i)  # the burst's requests arrive spread out, in no particular hurry
            batcher.submit("embed", [f"request {i}"]).result(timeout=60)

        passes.clear()
        threads = [threading.Thread(target=later, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert passes == [8], passes  # one batch gathered them all (with gather_s=0 they run in 8 passes)
    finally:
        batcher.stop()


def test_a_batch_of_mixed_lengths_pads_each_length_group_apart_and_keeps_the_order(bert_dir):
    holder = ModelHolder(resolve=lambda version: bert_dir, load=LoadedModel.load)
    holder.ensure("v0001")
    model = holder.current
    texts = [("short text " if i % 3 else "a much longer text about software licences " * 20) + str(i)
             for i in range(12)]
    encoded = model.encode(texts)
    groups = encoded.length_groups()
    assert len(groups) >= 2 and sorted(i for g in groups for i in g) == list(range(12))
    together = model.embed(encoded)
    alone = [model.embed([t])[0] for t in texts]
    assert torch.allclose(torch.tensor(together), torch.tensor(alone), atol=1e-5)
