"""One inference request never hurts another or the service (issue #8, class 1)."""

from __future__ import annotations

import json
from concurrent.futures import wait

import pytest
from fastapi.testclient import TestClient

from das.app import build_app
from serving.batcher import MicroBatcher
from serving.errors import InputError
from serving.holder import ModelHolder
from serving.model import LoadedModel

LONE_SURROGATE = json.loads('"a lone \\ud800 surrogate"')  # what a JSON escape can smuggle into a str


@pytest.fixture
def batcher(bert_dir):
    holder = ModelHolder(resolve=lambda version: bert_dir, load=LoadedModel.load)
    holder.ensure("v0001")
    # a long wait makes every request below land in one batch
    b = MicroBatcher(holder, max_batch_size=64, max_wait_s=0.3, queue_size=16)
    b.start()
    yield b
    b.stop()


@pytest.mark.parametrize("kind", ["embed", "fill_mask"])
def test_a_text_the_tokenizer_refuses_fails_alone(batcher, kind):
    mask = "[MASK]"
    good = [batcher.submit(kind, [f"the licence is {mask} here"]) for _ in range(2)]
    bad = batcher.submit(kind, [f"{LONE_SURROGATE} {mask}"])
    wait([*good, bad], timeout=30)
    assert all(f.result()[0] == "v0001" for f in good)
    with pytest.raises(InputError, match="cannot be tokenised"):
        bad.result()
    assert batcher.alive()
    assert batcher.submit(kind, [f"still {mask} answering"]).result(timeout=30)[0] == "v0001"


def test_the_loop_survives_a_batch_that_crashes(batcher, monkeypatch):
    def crash(kind, size):
        raise MemoryError("simulated")

    monkeypatch.setattr(batcher, "on_batch", crash)  # raises outside the model call, in the loop itself
    with pytest.raises(MemoryError):
        batcher.submit("embed", ["anything"]).result(timeout=30)
    monkeypatch.undo()
    assert batcher.alive()
    assert batcher.submit("embed", ["answered again"]).result(timeout=30)[0] == "v0001"


def test_the_api_refuses_a_lone_surrogate_and_readiness_follows_the_loop(service_settings):
    with TestClient(build_app(service_settings)) as client:
        body = '{"texts": ["fine [MASK] text", "bad \\ud800 [MASK]"]}'
        for route in ("/v1/fill-mask", "/v1/embeddings"):
            response = client.post(route, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422 and "text 1" in response.text and "surrogate" in response.text
        assert client.get("/readyz").status_code == 200
        client.app.state.service.batcher.stop()  # the loop ends: the process must not say ready
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "inference loop stopped"
