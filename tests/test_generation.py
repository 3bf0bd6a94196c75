"""Generation from causal LM versions (serving/generation.py, serving/decoding.py), on tiny random Llama and GPT-2
models built here, loaded as the service loads them (serving.model.LoadedModel): greedy text is transformers' own
`generate`; batched is unbatched, token for token, whether sequences start together or join a running batch; a seed
gives the same draws alone or batched; stop strings are cut and never sent; a cancelled request frees its sequences;
a request past its time ends as "length"; each version's sequences decode on that version. The service around it
(routes, SDK, hot swap, bounds): tests/test_generation_live.py."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from causal_models import chat_tokenizer, perturbed, reference_ids, tiny_causal

from das_engine.endtask import pooled_features
from serving.decoding import CausalDecoder
from serving.errors import InputError, NoChatTemplate, WrongKind
from serving.generation import Delta, Failed, Finished, GenerationScheduler, Sampling, _first_stop, _sendable
from serving.holder import ModelHolder
from serving.model import LoadedModel

FAMILIES = ("llama", "gpt2")
PROMPTS = ["the licence grants", "you may copy and distribute verbatim copies of the", "warranty",
           "this program is free software; you can", "a", "permission is hereby granted, free of charge, to any",
           "the source code", "def main(argv):"]


@pytest.fixture(scope="module")
def tokenizer(legal_docs, code_docs):
    return chat_tokenizer(legal_docs + code_docs)


@pytest.fixture(scope="module")
def folders(tokenizer, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causal")
    made = {family: tiny_causal(family, tokenizer, root / family) for family in FAMILIES}
    made["llama-v2"] = perturbed(made["llama"], root / "llama-v2")
    return made


@pytest.fixture(scope="module")
def models(folders) -> dict[str, LoadedModel]:
    loaded = {name: LoadedModel.load("v0002" if name.endswith("v2") else "v0001", folder)
              for name, folder in folders.items()}
    for model in loaded.values():
        model.warm()
    return loaded


class Scheduled:
    """A real scheduler with a holder whose turn the test may hold (as a swap does) to queue requests that must start
    in the same step; every decode step's rows and every sequence's end are recorded."""

    def __init__(self, max_concurrent: int = 8, timeout_s: float = 120.0) -> None:
        self.holder = ModelHolder(resolve=lambda version: Path(version), load=lambda *args: None)
        self.scheduler = GenerationScheduler(self.holder, max_concurrent, queue_size=64, timeout_s=timeout_s)
        self.steps: list[int] = []
        self.ended: list[str] = []
        self.scheduler.on_step, self.scheduler.on_end = self.steps.append, self.ended.append
        self.scheduler.start()

    def submit(self, model: LoadedModel, prompts: list[str], sampling: Sampling) -> Run:
        run = Run(len(prompts))
        ids = [model.decoder.tokenizer.prompt_ids(p) for p in prompts]
        run.request = self.scheduler.submit(model, ids, sampling, run.hear)
        return run

    def one(self, model: LoadedModel, prompt: str, sampling: Sampling) -> Finished:
        return self.submit(model, [prompt], sampling).wait()[0]


class Run:
    """What one request heard."""

    def __init__(self, count: int) -> None:
        self.count, self.finished, self.deltas, self.failed = count, {}, {}, None
        self.done, self.started = threading.Event(), threading.Event()
        self.request = None

    def hear(self, event) -> None:
        if isinstance(event, Delta):
            self.deltas.setdefault(event.index, []).append(event.text)
            self.started.set()
        elif isinstance(event, Finished):
            self.finished[event.index] = event
        elif isinstance(event, Failed):
            self.failed = event
        if self.failed is not None or len(self.finished) == self.count:
            self.done.set()

    def wait(self, timeout_s: float = 120.0) -> list[Finished]:
        assert self.done.wait(timeout_s), "the request did not end"
        assert self.failed is None, self.failed
        return [self.finished[i] for i in range(self.count)]

    def sent(self, index: int = 0) -> str:
        return "".join(self.deltas.get(index, []))


@pytest.fixture
def scheduled():
    made = Scheduled()
    yield made
    made.scheduler.stop()


GREEDY = Sampling(max_tokens=24, temperature=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_text_is_what_transformers_generates(family, models, folders, tokenizer, scheduled):
    model = models[family]
    for prompt in PROMPTS[:4]:
        got = scheduled.one(model, prompt, GREEDY)
        expected = reference_ids(folders[family], tokenizer(prompt)["input_ids"], GREEDY.max_tokens)
        assert got.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert (got.completion_tokens, got.prompt_tokens) == (len(expected), len(tokenizer(prompt)["input_ids"]))
        assert got.reason == ("stop" if expected[-1] == tokenizer.eos_token_id else "length")


def _alone(scheduled: Scheduled, model: LoadedModel, sampling: Sampling) -> list[Finished]:
    return [scheduled.one(model, prompt, sampling) for prompt in PROMPTS]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_tokens_equal_unbatched_ones(family, models, scheduled):
    model = models[family]
    sampling = Sampling(max_tokens=40, temperature=0)
    alone = _alone(scheduled, model, sampling)
    assert max(scheduled.steps) == 1
    with scheduled.holder.turn():  # the scheduler waits, as for a swap: all eight start in one step
        together = [scheduled.submit(model, [prompt], sampling) for prompt in PROMPTS]
    assert [run.wait()[0] for run in together] == alone
    assert max(scheduled.steps) == len(PROMPTS)
    first = scheduled.submit(model, [PROMPTS[0]], sampling)
    assert first.started.wait(60)
    with scheduled.holder.turn():  # seven join a batch that is running already, between two of its steps
        joining = [scheduled.submit(model, [prompt], sampling) for prompt in PROMPTS[1:]]
    assert [run.wait()[0] for run in [first, *joining]] == alone
    assert all(run.sent() == run.finished[0].text for run in [first, *joining])  # what was streamed is the text


def test_a_seed_draws_the_same_tokens_alone_or_batched(models, scheduled):
    model = models["llama"]
    seeded = Sampling(max_tokens=30, temperature=1.0, top_p=0.9, seed=7)
    alone = scheduled.one(model, PROMPTS[0], seeded)
    assert scheduled.one(model, PROMPTS[0], seeded) == alone
    with scheduled.holder.turn():
        runs = [scheduled.submit(model, [PROMPTS[0]], seeded)] + [
            scheduled.submit(model, [prompt], Sampling(max_tokens=30, temperature=1.0, seed=i))
            for i, prompt in enumerate(PROMPTS[1:])]
    assert runs[0].wait()[0] == alone
    others = {scheduled.one(model, PROMPTS[0], Sampling(max_tokens=30, temperature=1.0, top_p=0.9, seed=s)).text
              for s in (8, 9, 10)}
    assert others != {alone.text}  # another seed draws other tokens
    greedy = scheduled.one(model, PROMPTS[0], GREEDY)
    assert alone.text[:20] != greedy.text[:20]  # sampling at temperature 1 is not greedy


def test_stop_strings_end_the_text_and_are_never_sent(models, scheduled):
    model = models["llama"]
    whole = scheduled.one(model, PROMPTS[3], Sampling(max_tokens=40, temperature=0)).text
    k = next(i for i in range(4, len(whole) - 2) if whole.find(whole[i:i + 2]) == i and whole[i:i + 2].isalpha())
    stop = whole[k:k + 2]  # two letters first seen after the text's start
    run = scheduled.submit(model, [PROMPTS[3]], Sampling(max_tokens=40, temperature=0, stop=("never here", stop)))
    ended = run.wait()[0]
    assert (ended.text, ended.reason) == (whole[:k], "stop")
    assert run.sent() == whole[:k]  # streamed pieces: never a part of the stop string
    assert _sendable("the lic", ("licence",)) == "the "  # "lic" may begin the stop string: held back
    assert _sendable("the lic\ufffd", ()) == "the lic"  # half a character (a byte-level token) waits for the rest
    assert _first_stop("a b. c.", (".", " c")) == 3


def test_the_end_of_sequence_token_ends_the_text_unsent(models, scheduled):
    model = models["llama"]
    first = int(model.decoder.prefill(model.decoder.tokenizer.prompt_ids(PROMPTS[0])).logits[0].argmax())
    ending = CausalDecoder(model.model, model.decoder.tokenizer, model.device)
    ending.eos_ids = frozenset({first})  # the same weights, with greedy's first token as the end of sequence
    ended = scheduled.one(SimpleNamespace(decoder=ending), PROMPTS[0], GREEDY)
    assert (ended.reason, ended.text, ended.completion_tokens) == ("stop", "", 1)


def test_a_cancelled_request_frees_its_sequence(models):
    made = Scheduled(max_concurrent=1)
    try:
        long = made.submit(models["llama"], [PROMPTS[0]], Sampling(max_tokens=2000, temperature=0))
        assert long.started.wait(60)
        waiting = made.submit(models["llama"], [PROMPTS[1]], GREEDY)  # no free sequence: it waits
        long.request.cancel()  # the client went away
        assert waiting.wait()[0].completion_tokens > 0
        assert not long.finished and "cancelled" in made.ended
    finally:
        made.scheduler.stop()


def test_a_request_past_its_time_ends_as_length(models):
    made = Scheduled(timeout_s=1e-9)
    try:
        ended = made.one(models["llama"], PROMPTS[0], Sampling(max_tokens=50, temperature=0))
        assert (ended.reason, ended.timed_out, ended.completion_tokens) == ("length", True, 0)
        assert made.ended == ["timeout"]
    finally:
        made.scheduler.stop()


def test_each_version_decodes_its_own_sequences(models, scheduled):
    """What a hot swap relies on: a request holds the version it arrived on; two versions never share a step."""
    old, new = models["llama"], models["llama-v2"]
    sampling = Sampling(max_tokens=30, temperature=0)
    expected = {v.version: [scheduled.one(v, p, sampling) for p in PROMPTS[:4]] for v in (old, new)}
    assert expected["v0001"] != expected["v0002"]
    scheduled.steps.clear()
    with scheduled.holder.turn():
        runs = {v.version: [scheduled.submit(v, [p], sampling) for p in PROMPTS[:4]] for v in (old, new)}
    assert {v: [run.wait()[0] for run in found] for v, found in runs.items()} == expected
    assert max(scheduled.steps) == 4  # a batch per version


def test_a_causal_version_serves_embeddings_and_refuses_fill_mask(models, folders, tokenizer, bert_dir):
    model = models["gpt2"]
    assert (model.kind, model.mask_token, model.backend) == ("causal", None, "torch")
    texts = ["the licence grants", "a longer text: the licence grants you the rights to copy it"]
    vectors = torch.tensor(model.embed(texts))
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2))
    # the probes' features (das_engine.endtask) are what the service serves, padding and all
    assert torch.allclose(vectors, pooled_features(model.model, model.tokenizer, texts, max_length=512), atol=1e-5)
    with pytest.raises(WrongKind, match="causal language model"):
        model.check_fill_mask(["a [MASK]"], model.encode(["a [MASK]"]))
    masked = LoadedModel.load("v0001", bert_dir)
    assert (masked.kind, masked.decoder) == ("masked", None)


def test_a_tokenizer_without_a_chat_template_says_so(legal_docs, tmp_path):
    plain = LoadedModel.load("v0001", tiny_causal("llama", chat_tokenizer(legal_docs, chat_template=None), tmp_path))
    with pytest.raises(NoChatTemplate, match="no chat template"):
        plain.decoder.tokenizer.chat_ids([{"role": "user", "content": "hi"}])
    with pytest.raises(InputError):
        plain.decoder.tokenizer.prompt_ids("\ud800")  # a lone surrogate: the tokenizer refuses it
