"""Generation through a real `das serve` whose store's base is a tiny random causal LM (tests/causal_models.py),
driven by the real openai SDK, the Python client and `das --url URL generate`: completions and chat as transformers'
own `generate` gives them, streams as server-sent events, seeds, stop strings, usage counts, the bounds (422 before
any work), fill-mask's 409 on a causal version and generation's on a masked one, pinned versions and aliases, a
client that leaves, and a hot swap during eight streams: each finishes on the version it started on, none fails."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from causal_models import CONTEXT, chat_tokenizer, perturbed, reference_ids, tiny_causal
from das_client import Client, Conflict, InvalidRequest
from service_helpers import das_serve, wait_serving
from typer.testing import CliRunner

from das.cli import app
from das_settings import get_settings
from model_store.store import ModelStore, PublishRequest

PROMPT = "permission is hereby granted, free of charge, to any person"
MESSAGES = [{"role": "system", "content": "you answer briefly"}, {"role": "user", "content": "what is a licence?"}]
MAX_NEW = 1900  # DAS_MAX_NEW_TOKENS of the causal servers
SERVER_ENV = {"DAS_MAX_NEW_TOKENS": str(MAX_NEW), "DAS_MAX_PROMPT_TOKENS": "1024", "DAS_MAX_CONCURRENT_SEQUENCES": "8"}


@pytest.fixture(scope="module")
def tokenizer(legal_docs, code_docs):
    return chat_tokenizer(legal_docs + code_docs)


def _serve(root: Path, env: dict[str, str]):
    return das_serve(root / "store", root / "work", get_settings().models_dir, log=root / "server.log", extra_env=env)


@pytest.fixture(scope="module")
def llama(tokenizer, tmp_path_factory):
    """A store whose v0001 is a tiny Llama whose greedy text never ends before max_tokens and v0002 (a candidate) the
    same with other weights; its server's URL and v0001's folder."""
    root = tmp_path_factory.mktemp("llama-serve")
    base = tiny_causal("llama", tokenizer, root / "llama", never_ends=True)
    store = ModelStore.open(root / "store")
    store.init_base(base, str(base))
    store.publish(PublishRequest(perturbed(base, root / "llama-v2"), "v0001", "legal", str(base)), activate=False)
    server, url = _serve(root, {"DAS_BASE_MODEL": str(base), **SERVER_ENV})
    try:
        yield url, base
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture(scope="module")
def gpt2(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2-serve")
    base = tiny_causal("gpt2", tokenizer, root / "gpt2")
    server, url = _serve(root, {"DAS_BASE_MODEL": str(base), **SERVER_ENV})
    try:
        yield url, base
    finally:
        server.terminate()
        server.wait(30)


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _chat_ids(tokenizer) -> list[int]:
    return tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_completions_and_chat_are_what_transformers_generates(family, request, tokenizer):
    url, base = request.getfixturevalue(family)
    answer = sdk(url).completions.create(model="production", prompt=PROMPT, max_tokens=12, temperature=0)
    expected = reference_ids(base, tokenizer(PROMPT)["input_ids"], 12)
    assert answer.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert (answer.model, answer.object, answer.choices[0].index) == ("v0001", "text_completion", 0)
    assert answer.usage.prompt_tokens == len(tokenizer(PROMPT)["input_ids"])
    assert answer.usage.completion_tokens == len(expected)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    chat = sdk(url).chat.completions.create(model="production", messages=MESSAGES, max_tokens=10, temperature=0)
    expected = reference_ids(base, _chat_ids(tokenizer), 10)
    assert chat.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)
    assert (chat.choices[0].message.role, chat.object) == ("assistant", "chat.completion")
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (len(_chat_ids(tokenizer)), len(expected))


def test_streams_parse_with_the_openai_sdk(llama):
    url, _ = llama
    whole = sdk(url).completions.create(model="production", prompt=PROMPT, max_tokens=20, temperature=0)
    chunks = list(sdk(url).completions.create(model="production", prompt=PROMPT, max_tokens=20, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage and all(c.usage is None for c in chunks[:-1])

    said = sdk(url).chat.completions.create(model="production", messages=MESSAGES, max_tokens=15, temperature=0)
    pieces = list(sdk(url).chat.completions.create(model="production", messages=MESSAGES, max_tokens=15,
                                                   temperature=0, stream=True))
    assert pieces[0].choices[0].delta.role == "assistant" and pieces[0].object == "chat.completion.chunk"
    assert "".join(p.choices[0].delta.content or "" for p in pieces) == said.choices[0].message.content
    assert pieces[-1].choices[0].finish_reason == said.choices[0].finish_reason
    assert len({p.id for p in pieces}) == 1


def test_a_seed_gives_the_same_text_and_stop_strings_end_it(llama):
    url, _ = llama
    client = sdk(url)

    def sampled(seed: int) -> str:
        return client.completions.create(model="production", prompt=PROMPT, max_tokens=25, seed=seed,
                                         temperature=1.0).choices[0].text

    first = sampled(11)
    assert sampled(11) == first
    assert {sampled(seed) for seed in (12, 13, 14)} != {first}

    whole = client.completions.create(model="production", prompt=PROMPT, max_tokens=40, temperature=0).choices[0].text
    k = next(i for i in range(4, len(whole) - 2) if whole.find(whole[i:i + 2]) == i and whole[i:i + 2].isalpha())
    cut = client.completions.create(model="production", prompt=PROMPT, max_tokens=40, temperature=0,
                                    stop=[whole[k:k + 2], "zzzz"])
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (whole[:k], "stop")
    streamed = client.completions.create(model="production", prompt=PROMPT, max_tokens=40, temperature=0,
                                         stop=whole[k:k + 2], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole[:k]


def _ended(url: str) -> dict[str, float]:
    """das_generation_sequences_ended_total by how, and das_generation_running."""
    text = httpx.get(f"{url}/metrics").text
    found = {how: float(n) for how, n in re.findall(r'das_generation_sequences_ended_total\{how="(\w+)"\} (\S+)', text)}
    found["running"] = float(re.search(r"^das_generation_running (\S+)", text, re.M).group(1))
    return found


def test_bounds_are_refused_before_any_work(llama, legal_docs, tokenizer):
    url, _ = llama
    client, before = sdk(url), _ended(url)

    def refused(prompt: str, max_tokens: int) -> str:
        with pytest.raises(openai.UnprocessableEntityError) as err:  # the SDK keeps this API's {"detail": ...}
            client.completions.create(model="production", prompt=prompt, max_tokens=max_tokens)
        return err.value.body["detail"]

    assert re.search(f"at most {MAX_NEW} tokens .*DAS_MAX_NEW_TOKENS", refused(PROMPT, MAX_NEW + 1))
    long = tokenizer(" ".join(legal_docs))["input_ids"]
    assert re.search("the limit is 1024 .*DAS_MAX_PROMPT_TOKENS", refused(tokenizer.decode(long[:1100]), 5))
    assert re.search(f"reads at most {CONTEXT} .*context", refused(tokenizer.decode(long[:1000]), 1200))
    for bad in ({"n": 2}, {"frequency_penalty": 0.5}, {"prompt": [PROMPT] * 9}, {"logprobs": 2}):
        body = {"model": "production", "prompt": PROMPT, "max_tokens": 3, **bad}
        refused = httpx.post(f"{url}/v1/completions", json=body)
        assert refused.status_code == 422, (bad, refused.text)
    assert "did you mean" in httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_token": 3}).text
    assert _ended(url) == before  # nothing was generated


def test_a_causal_version_answers_embeddings_and_refuses_fill_mask(llama):
    url, _ = llama
    refused = httpx.post(f"{url}/v1/fill-mask", json={"texts": ["the [MASK] grants"]})
    assert refused.status_code == 409 and "causal language model" in refused.json()["detail"]
    assert "/v1/completions" in refused.json()["detail"]
    assert httpx.post(f"{url}/", json={"inputs": "the licence", "parameters": {"top_k": 2}}).status_code == 409
    assert len(httpx.post(f"{url}/embed", json={"inputs": ["the licence"]}).json()[0]) == 32  # TEI's route
    assert len(sdk(url).embeddings.create(model="production", input="the licence").data[0].embedding) == 32
    assert httpx.get(f"{url}/readyz").json()["backend"] == "torch"


def test_a_masked_version_refuses_generation(tmp_path):
    server, url = _serve(tmp_path, {})  # the embedded BERT
    try:
        with pytest.raises(openai.ConflictError) as err:
            sdk(url).completions.create(model="production", prompt="the licence", max_tokens=3)
        assert "v0001 is a masked language model: it does not generate text" in err.value.body["detail"]
        with pytest.raises(Conflict, match="does not generate text"):
            with Client(url) as das:
                das.chat([{"role": "user", "content": "hi"}])
    finally:
        server.terminate()
        server.wait(30)


def test_pinned_versions_and_aliases_generate_with_their_version(llama):
    url, _ = llama
    client = sdk(url)
    one = client.completions.create(model="production", prompt=PROMPT, max_tokens=15, temperature=0)
    two = client.completions.create(model="v0002", prompt=PROMPT, max_tokens=15, temperature=0)
    assert (one.model, two.model) == ("v0001", "v0002") and one.choices[0].text != two.choices[0].text
    assert httpx.put(f"{url}/v1/aliases/candidate", json={"version": "v0002"}).status_code == 200
    by_alias = client.chat.completions.create(model="candidate", messages=MESSAGES, max_tokens=8, temperature=0)
    by_query = httpx.post(f"{url}/v1/chat/completions?version=v0002",
                          json={"messages": MESSAGES, "max_tokens": 8, "temperature": 0}).json()
    assert by_alias.model == by_query["version"] == "v0002"
    assert by_alias.choices[0].message.content == by_query["choices"][0]["message"]["content"]


def test_the_python_client_and_das_generate(llama):
    url, _ = llama
    expected = sdk(url).completions.create(model="production", prompt=PROMPT, max_tokens=8, temperature=0)
    with Client(url) as das:
        done = das.complete(PROMPT, max_tokens=8, temperature=0)
        assert (done.text, done.version, done.usage.completion_tokens) == (expected.choices[0].text, "v0001", 8)
        with das.stream_complete(PROMPT, max_tokens=8, temperature=0) as stream:
            assert "".join(stream) == done.text
        assert (stream.finish_reason, stream.usage, stream.version) == ("length", done.usage, "v0001")
        chat = das.chat(MESSAGES, max_tokens=6, temperature=0, version="v0002")
        assert chat.version == "v0002" and chat.usage.completion_tokens <= 6
        with pytest.raises(InvalidRequest, match="DAS_MAX_NEW_TOKENS"):
            das.complete(PROMPT, max_tokens=MAX_NEW + 1)
    cli = CliRunner()
    greedy = ["--url", url, "generate", PROMPT, "--max-tokens", "8", "--temperature", "0"]
    shown = cli.invoke(app, greedy)
    assert shown.exit_code == 0 and shown.stdout == done.text + "\n", shown.output
    streamed = cli.invoke(app, [*greedy, "--stream"])
    assert streamed.exit_code == 0 and streamed.stdout == done.text + "\n", streamed.output
    chatted = cli.invoke(app, ["--url", url, "generate", "what is a licence?", "--chat", "--system", "you answer "
                               "briefly", "--max-tokens", "6", "--temperature", "0", "--version", "v0002"])
    assert chatted.exit_code == 0 and chatted.stdout == chat.text + "\n", chatted.output
    assert "finish_reason" in chatted.stderr


def test_a_client_that_leaves_frees_its_sequence(llama):
    url, _ = llama
    before = _ended(url)
    body = {"model": "production", "prompt": PROMPT, "max_tokens": MAX_NEW, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert next(line for line in response.iter_lines() if line.startswith("data: "))
    deadline = time.monotonic() + 60  # a guard: the sequence ends at the server's next step
    while (now := _ended(url))["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now.get("cancelled", 0) == before.get("cancelled", 0) + 1
    assert now.get("length", 0) == before.get("length", 0)  # it did not run to its max_tokens


def test_a_hot_swap_during_eight_streams_finishes_each_on_its_version(llama):
    """Eight streams on v0001; v0002 is activated mid-stream: every stream ends on v0001 with v0001's text, a new one
    runs on v0002, and nothing fails."""
    url, _ = llama
    client, tokens = sdk(url), MAX_NEW
    expected = {}
    for v in ("v0001", "v0002"):
        choice = client.completions.create(model=v, prompt=PROMPT, max_tokens=tokens, temperature=0).choices[0]
        expected[v] = (choice.text, choice.finish_reason)
    assert expected["v0001"] != expected["v0002"]
    streams = [_Stream(url, tokens) for _ in range(8)]
    try:
        for stream in streams:
            assert stream.started.wait(60), stream.error
        assert httpx.post(f"{url}/v1/models/v0002/activate").status_code == 200
        wait_serving(httpx.Client(base_url=url), "v0002", timeout_s=60)
        running = sum(not stream.done.is_set() for stream in streams)
        fresh = client.completions.create(model="production", prompt=PROMPT, max_tokens=tokens, temperature=0)
        for stream in streams:
            stream.join()
        assert running > 0, "every stream ended before the swap: nothing was swapped mid-stream"
        ended = [(s.error, s.versions, (s.text, s.finish)) for s in streams]
        assert ended == [(None, {"v0001"}, expected["v0001"])] * 8
        assert (fresh.model, (fresh.choices[0].text, fresh.choices[0].finish_reason)) == ("v0002", expected["v0002"])
        assert "failed" not in _ended(url)
    finally:
        httpx.post(f"{url}/v1/models/v0001/activate")
        wait_serving(httpx.Client(base_url=url), "v0001", timeout_s=60)


class _Stream(threading.Thread):
    """One streamed completion read through the openai SDK on a thread of its own."""

    def __init__(self, url: str, tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.tokens = url, tokens
        self.started, self.done = threading.Event(), threading.Event()
        self.versions, self.text, self.finish, self.error = set(), "", None, None
        self.start()

    def run(self) -> None:
        try:
            for chunk in sdk(self.url).completions.create(model="production", prompt=PROMPT, max_tokens=self.tokens,
                                                          temperature=0, stream=True):
                self.versions.add(chunk.model)
                self.text += chunk.choices[0].text
                self.finish = chunk.choices[0].finish_reason or self.finish
                self.started.set()
        except Exception as err:  # noqa: BLE001 - the test reports it
            self.error = repr(err)
        finally:
            self.started.set()
            self.done.set()
