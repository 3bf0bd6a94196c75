"""The replay corpora's token ids, cached by the documents' and the tokenizer's digests: the same packed blocks as
tokenising, read back without tokenising, and a damaged entry only costs a tokenisation."""

from __future__ import annotations

import logging

import torch

from das_engine.data import pack_corpus, tokenize
from das_engine.token_cache import TokenCache
from das_engine.training_data import TrainingData
from das_formats.config import upload_config


class Refusing:
    """The tokenizer, except that tokenising fails: what the cache must not need once it holds the documents."""

    def __init__(self, tokenizer) -> None:
        self.backend_tokenizer = tokenizer.backend_tokenizer

    def __call__(self, *args, **kwargs):
        raise AssertionError("tokenised again")


def test_the_cache_gives_the_tokenizers_ids_and_reads_them_back_without_it(model_and_tokenizer, legal_docs, tmp_path):
    _, tokenizer = model_and_tokenizer
    docs = legal_docs[:40] + [""]  # an empty document keeps its place
    want = tokenizer(docs, add_special_tokens=False)["input_ids"]
    assert TokenCache(tmp_path, tokenizer).token_ids(docs).to_lists() == want
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert TokenCache(tmp_path, Refusing(tokenizer)).token_ids(docs).to_lists() == want
    tokenizer(["a call that sets truncation and padding on the backend"], truncation=True, max_length=8,
              padding="max_length")
    assert TokenCache(tmp_path, tokenizer).token_ids(docs).to_lists() == want  # the same entry
    # other documents: another entry
    assert TokenCache(tmp_path, tokenizer).token_ids(docs[:-2]).to_lists() == want[:-2]
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_a_damaged_entry_is_tokenised_again_and_rewritten(model_and_tokenizer, legal_docs, tmp_path, caplog):
    _, tokenizer = model_and_tokenizer
    docs = legal_docs[:10]
    TokenCache(tmp_path, tokenizer).token_ids(docs)
    [entry] = tmp_path.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:50])
    with caplog.at_level(logging.WARNING, logger="das_engine.token_cache"):
        assert TokenCache(tmp_path, tokenizer).token_ids(docs).to_lists() == tokenize(docs, tokenizer).to_lists()
    assert "does not read" in caplog.text
    assert TokenCache(tmp_path, Refusing(tokenizer)).token_ids(docs).to_lists() == tokenize(docs, tokenizer).to_lists()


def test_replay_packed_from_the_cache_is_the_same_blocks(model_and_tokenizer, legal_docs, code_docs, tmp_path):
    _, tokenizer = model_and_tokenizer
    config = upload_config({"steps": 4, "batch_size": 4, "max_length": 64})
    replay = {"legal (v0002)": legal_docs[:30], "code (v0003)": code_docs[:30]}
    plain = TrainingData.prepare(code_docs[30:60], replay, tokenizer, config)
    for _ in range(2):  # the first fills the cache, the second reads it
        cached = TrainingData.prepare(code_docs[30:60], replay, tokenizer, config, token_cache=tmp_path)
        assert torch.equal(cached.replay.input_ids, plain.replay.input_ids)
        assert torch.equal(cached.replay.attention_mask, plain.replay.attention_mask)
        assert cached.replay_documents == plain.replay_documents
    docs = ["", *legal_docs[:5], "", ""]  # empty documents keep their separators
    want = [i for ids in tokenizer(docs, add_special_tokens=False)["input_ids"] for i in (*ids, tokenizer.sep_token_id)]
    for packed in (pack_corpus(docs, tokenizer, 64), pack_corpus(docs, tokenizer, 64, tokenize(docs, tokenizer))):
        lengths = packed.attention_mask.sum(1) - 2  # each block: [CLS] its part of the stream [SEP]
        got = [i for row, n in zip(packed.input_ids.tolist(), lengths.tolist(), strict=True) for i in row[1:1 + n]]
        assert got == want
