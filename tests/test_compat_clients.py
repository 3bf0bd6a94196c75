"""The clients people already have, against a real `das serve` (embedded, both tokens set): the openai SDK's
embeddings (floats and base64), huggingface_hub's InferenceClient (feature_extraction, fill_mask), and
text-embeddings-inference's /embed, /tokenize and /info over plain HTTP. Each answers what /v1 answers for the same
text, through the same tokens, limits and version pinning; bad input is a 422 that says what to fix."""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from service_helpers import das_serve

from das_settings import get_settings

MGMT, INFER = "compat-mgmt", "compat-infer"
TEXTS = ["the court dismissed the appeal.", "shares fell after the bank cut its forecast."]
MASKED = "the court [MASK] the appeal."
LONG = "word " * 600  # over the model's 512 tokens, under DAS_MAX_TEXT_CHARS
CLOSE = 1e-5


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("compat")
    proc, url = das_serve(root / "store", root / "work", get_settings().models_dir, root / "server.log",
                          extra_env={"DAS_MANAGEMENT_TOKEN": MGMT, "DAS_INFERENCE_TOKEN": INFER})
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {INFER}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def pinned(http) -> str:
    """An alias of v0001, for requests that name a version."""
    answer = http.put("/v1/aliases/compat-pin", json={"version": "v0001"}, headers={"Authorization": f"Bearer {MGMT}"})
    assert answer.status_code == 200, answer.text
    return "compat-pin"


def v1_vectors(http: httpx.Client, texts: list[str], **body) -> list[list[float]]:
    answer = http.post("/v1/embeddings", json={"texts": texts, **body})
    assert answer.status_code == 200, answer.text
    return answer.json()["embeddings"]


def assert_close(got, expected) -> None:
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert len(row) == len(want)
        assert max(abs(a - b) for a, b in zip(row, want, strict=True)) < CLOSE


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


# ------------------------------------------------------------------------------------------------ the openai SDK
def test_the_openai_sdk_gets_the_servers_vectors_in_each_encoding(server, http):
    """The SDK asks for base64 when no encoding_format is given and decodes it; floats and base64 asked for
    explicitly come as sent. All three are /v1/embeddings' vectors."""
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=INFER)
    expected = v1_vectors(http, TEXTS)
    default = client.embeddings.create(model="production", input=TEXTS)
    assert default.model == "v0001" and [d.index for d in default.data] == [0, 1]
    assert default.usage.prompt_tokens > len(TEXTS)
    assert_close([d.embedding for d in default.data], expected)
    floats = client.embeddings.create(model="v0001", input=TEXTS, encoding_format="float")
    assert_close([d.embedding for d in floats.data], expected)
    packed = client.embeddings.create(model="production", input=TEXTS, encoding_format="base64")
    decoded = [struct.unpack(f"<{len(expected[0])}f", base64.b64decode(d.embedding)) for d in packed.data]
    assert_close(decoded, expected)


def test_the_openai_sdk_names_a_version_by_alias_and_its_other_fields_are_understood(server, http, pinned):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=INFER)
    one = client.embeddings.create(model=pinned, input=TEXTS[0], user="someone", dimensions=128)
    assert one.model == "v0001"
    assert_close([one.data[0].embedding], v1_vectors(http, TEXTS[:1]))
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.embeddings.create(model="production", input=TEXTS[0], dimensions=64)
    assert "have 128 dimensions, not 64" in refused.value.body["detail"]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="text-embedding-3-small", input=TEXTS[0])
    assert "text-embedding-3-small" in unknown.value.body["detail"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong").embeddings.create(model="production", input="x")


# ------------------------------------------------------------------------------ huggingface_hub's InferenceClient
def test_inference_client_feature_extraction_gets_the_servers_vectors(server, http):
    client = InferenceClient(base_url=server, token=INFER)
    one = client.feature_extraction(TEXTS[0])
    assert one.shape == (1, 128)
    assert_close(one.tolist(), v1_vectors(http, TEXTS[:1]))
    both = client.feature_extraction(TEXTS, normalize=False, truncate=True)
    raw = http.post("/embed", json={"inputs": TEXTS, "normalize": False}).json()
    assert_close(both.tolist(), raw)
    assert abs(norm(both[0].tolist()) - 1) > 0.01  # not normalised


def test_inference_client_fill_mask_answers_as_the_pipeline_does(server, http):
    client = InferenceClient(base_url=server, token=INFER)
    expected = http.post("/v1/fill-mask", json={"texts": [MASKED], "top_k": 3}).json()["results"][0][0]
    answer = client.fill_mask(MASKED, top_k=3)
    assert [a.token for a in answer] == [c["token_id"] for c in expected]
    assert [a.token_str for a in answer] == [c["token"] for c in expected]
    assert all(abs(a.score - c["score"]) < CLOSE for a, c in zip(answer, expected, strict=True))
    assert answer[0].sequence == MASKED.replace("[MASK]", expected[0]["token"])
    assert len(client.fill_mask(MASKED)) == 5  # the pipeline's default top_k


def test_inference_client_fill_mask_without_a_mask_token_is_refused_with_the_rule(server):
    with pytest.raises(HfHubHTTPError) as refused:
        InferenceClient(base_url=server, token=INFER).fill_mask("no mask in this text")
    assert refused.value.response.status_code == 422
    assert "hold no mask token ('[MASK]')" in refused.value.response.json()["detail"]


def test_post_root_tells_the_tasks_apart_by_the_mask_token(http):
    """Every text with [MASK]: fill-mask, nested per text and per mask token as the pipeline nests them; none: a
    vector per text; a mix, or the other task's parameter: a 422 that states the rule."""
    two_masks = "the [MASK] [MASK] the appeal."
    nested = http.post("/", json={"inputs": [MASKED, two_masks], "parameters": {"top_k": 2}}).json()
    assert len(nested) == 2 and len(nested[0]) == 2 and [len(m) for m in nested[1]] == [2, 2]
    first, second = nested[1]
    assert first[0]["sequence"] == f"the {first[0]['token_str']} [MASK] the appeal."
    assert second[0]["sequence"] == f"the [MASK] {second[0]['token_str']} the appeal."
    assert_close(http.post("/", json={"inputs": TEXTS}).json(), v1_vectors(http, TEXTS))
    for body, says in (({"inputs": [MASKED, TEXTS[0]]}, "1 of 2 texts hold the mask token"),
                       ({"inputs": TEXTS[0], "parameters": {"top_k": 2}}, "hold no mask token"),
                       ({"inputs": MASKED, "normalize": False}, "takes no 'normalize'"),
                       ({"inputs": MASKED, "parameters": {"targets": ["court"]}}, "targets are not offered"),
                       ({"inputs": TEXTS[0], "normalize": True, "parameters": {"normalize": False}}, "send one of")):
        answer = http.post("/", json=body)
        assert answer.status_code == 422 and says in answer.text, (body, answer.text)


# ------------------------------------------------------------------------------- text-embeddings-inference's routes
def test_embed_answers_normalised_and_raw_mean_pooled_vectors_through_the_batcher(http):
    expected = v1_vectors(http, TEXTS)
    assert_close(http.post("/embed", json={"inputs": TEXTS}).json(), expected)
    assert_close(http.post("/embed", json={"inputs": TEXTS[0]}).json(), expected[:1])
    batches = _batches(http, "embed_unnormalised")
    raw = http.post("/embed", json={"inputs": TEXTS, "normalize": False}).json()
    assert _batches(http, "embed_unnormalised") > batches
    assert all(abs(norm(row) - 1) > 0.01 for row in raw)
    assert_close([[x / norm(row) for x in row] for row in raw], expected)  # the same vector, before its L2 norm


def _batches(http: httpx.Client, kind: str) -> float:
    found = re.search(rf'^das_batch_size_count\{{kind="{kind}"\}} (\S+)$', http.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def test_embed_truncates_only_when_asked(http):
    refused = http.post("/embed", json={"inputs": [LONG]})
    assert refused.status_code == 422 and "send truncate: true" in refused.json()["detail"]
    cut = http.post("/embed", json={"inputs": [LONG], "truncate": True, "truncation_direction": "right"})
    assert cut.status_code == 200
    assert_close(cut.json(), v1_vectors(http, [LONG], truncate=True))


def test_tokenize_shows_each_token_with_its_characters(http):
    text = "The court [MASK] héllo"
    tokens = http.post("/tokenize", json={"inputs": text}).json()
    assert len(tokens) == 1
    first, *inner, last = tokens[0]
    assert (first["text"], first["special"], first["start"]) == ("[CLS]", True, None)
    assert (last["text"], last["special"], last["stop"]) == ("[SEP]", True, None)
    assert [t["text"] for t in inner] == ["The", "court", "[MASK]", "héllo"]
    assert all(text[t["start"]:t["stop"]] == t["text"] and not t["special"] for t in inner)
    plain = http.post("/tokenize", json={"inputs": [text, "court"], "add_special_tokens": False}).json()
    assert [t["id"] for t in plain[0]] == [t["id"] for t in inner] and len(plain) == 2
    whole = http.post("/tokenize", json={"inputs": LONG}).json()[0]  # whole, never cut to 512
    assert len(whole) == 602


def test_info_describes_the_answering_version_and_the_limits(http, pinned):
    info = http.get("/info").json()
    assert info["model_sha"] == http.get("/readyz").json()["version"] == "v0001"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert (info["max_input_length"], info["max_client_batch_size"], info["auto_truncate"]) == (512, 64, False)
    assert info["model_dtype"] == "float32" and info["model_id"]
    assert http.get("/info", params={"version": pinned}).json()["model_sha"] == "v0001"
    assert http.get("/info", params={"version": "v0042"}).status_code == 404


@pytest.mark.parametrize(("path", "body", "says"), [
    ("/embed", {"inputs": []}, "holds no text"),
    ("/embed", {"inputs": [""]}, "text 0 is empty"),
    ("/embed", {"inputs": ["x"] * 65}, "at most 64 texts"),
    ("/embed", {"inputs": 3}, "valid string"),
    ("/embed", {"inputs": [1, 2]}, "valid string"),
    ("/embed", {"inputs": "x", "normalise": False}, "did you mean 'normalize'?"),
    ("/embed", {"inputs": "x", "truncation_direction": "left"}, "not offered"),
    ("/embed", {"inputs": "x", "prompt_name": "query"}, "no named prompts"),
    ("/embed", {"inputs": "x", "normalize": "maybe"}, "valid boolean"),
    ("/tokenize", {"inputs": []}, "holds no text"),
    ("/tokenize", {"inputs": "x", "add_special_tokens": "maybe"}, "valid boolean"),
    ("/", {"inputs": ["x"] * 65}, "at most 64 texts"),
    ("/", {"inputs": MASKED, "parameters": {"top_k": 0}}, "greater than or equal to 1"),
])
def test_bad_input_is_a_422_that_says_what_to_fix(http, path, body, says):
    answer = http.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert says in answer.text


def test_the_routes_need_the_token_and_honour_the_pinned_version(server, http, pinned):
    for method, path in (("post", "/embed"), ("post", "/tokenize"), ("post", "/"), ("get", "/info")):
        body = {"json": {"inputs": "x"}} if method == "post" else {}
        assert getattr(httpx, method)(f"{server}{path}", **body).status_code == 401, path
        unknown = getattr(http, method)(path, params={"version": "v0042"}, **body)
        assert unknown.status_code == 404 and "v0042" in unknown.json()["detail"], (path, unknown.text)
    assert http.post("/embed", json={"inputs": "x", "version": "v0042"}).status_code == 404
    assert_close(http.post("/embed", params={"version": pinned}, json={"inputs": TEXTS}).json(),
                 v1_vectors(http, TEXTS))


def test_the_routes_are_in_the_openapi_page(http):
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/", "/embed", "/tokenize", "/info"} <= set(paths)
    assert paths["/info"]["get"]["tags"] == ["compatibility"]
