"""DAS_SERVE_INT8: the service serves the encoder's Linear layers as dynamic int8; answers stay close to fp32's."""

import pytest
import torch
from fastapi.testclient import TestClient

from das.app import build_app
from das_settings import Settings

TEXTS = ["permission is hereby granted, free of charge, to any person.", "the court dismissed the appeal."]


def _served(settings):
    with TestClient(build_app(settings)) as client:
        embeddings = client.post("/v1/embeddings", json={"texts": TEXTS})
        filled = client.post("/v1/fill-mask", json={"texts": ["the court [MASK] the appeal."], "top_k": 5})
        assert embeddings.status_code == 200 and filled.status_code == 200
        encoder = client.app.state.service.holder.current.model.base_model.encoder
        kinds = {m._get_name() for m in encoder.modules()}  # int8 Linear layers name themselves DynamicQuantizedLinear
        return torch.tensor(embeddings.json()["embeddings"]), filled.json(), kinds


def test_int8_serving_quantises_the_encoder_and_answers_close_to_fp32(service_settings):
    fp32, _, fp32_kinds = _served(service_settings)
    int8, filled, int8_kinds = _served(service_settings.model_copy(update={"serve_int8": True}))
    assert "Linear" in fp32_kinds and "DynamicQuantizedLinear" not in fp32_kinds
    assert "DynamicQuantizedLinear" in int8_kinds and "Linear" not in int8_kinds
    assert not torch.equal(fp32, int8), "int8 changes the numbers a little"
    assert torch.nn.functional.cosine_similarity(fp32, int8).min() > 0.99
    assert len(filled["results"][0][0]) == 5 and filled["version"] == "v0001"


def test_int8_serving_is_refused_on_a_gpu(tmp_path):
    with pytest.raises(ValueError, match="DAS_SERVE_INT8 serves on the CPU only"):
        Settings(store=str(tmp_path), serve_int8=True, device="cuda")
