"""Corpus reading, packing and masking; the masked-only MLM loss equals the full-vocabulary one."""

import json

import pytest
import torch

from das_engine.data import mask_tokens, pack_corpus
from das_engine.mlm import hidden_states, masked_lm_loss
from das_engine.units import resolve_units
from das_formats.corpus import CorpusError, read_corpus


def test_reads_text_and_jsonl(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("first document\n\n  second document  \n", encoding="utf-8")
    assert read_corpus(txt) == ["first document", "second document"]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["a b", "c d"])))
    assert read_corpus(jsonl) == ["a b", "c d"]


@pytest.mark.parametrize("name,content,message", [
    ("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"), "not UTF-8"),
    ("blob.bin", b"\x00\x01\x02binary", "binary"),
    ("empty.txt", b"\n  \n", "no documents"),
    ("bad.jsonl", b'{"text": "ok"}\n{"body": "no text"}\n', "line 2 has no string field 'text'"),
    ("broken.jsonl", b'{"text": "ok"}\n{not json\n', "line 2 is not valid JSON"),
])
def test_bad_corpora_get_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        read_corpus(path)


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path / "nope.txt")


def test_pack_makes_full_blocks_with_specials(model_and_tokenizer, legal_docs):
    _, tok = model_and_tokenizer
    packed = pack_corpus(legal_docs, tok, max_length=64)
    ids, mask = packed.input_ids, packed.attention_mask
    assert ids.shape == mask.shape and ids.shape[1] == 64
    assert (ids[:, 0] == tok.cls_token_id).all()
    assert mask[:-1].all()  # only the last block may be padded
    lengths = mask.sum(1)
    assert (ids[torch.arange(len(ids)), lengths - 1] == tok.sep_token_id).all()
    assert (ids[mask == 0] == tok.pad_token_id).all()
    # every token of every document is in the blocks, in order
    stream = [t for d in legal_docs for t in (*tok(d, add_special_tokens=False)["input_ids"], tok.sep_token_id)]
    body = [t for b in range(len(ids)) for t in ids[b, 1: lengths[b] - 1].tolist()]
    assert body == stream
    assert packed.num_tokens == int(mask.sum())


def test_masking_skips_specials_and_padding(model_and_tokenizer, legal_docs):
    _, tok = model_and_tokenizer
    packed = pack_corpus(legal_docs, tok, max_length=64)
    masked, labels = mask_tokens(packed.input_ids, packed.attention_mask, tok, 0.15,
                                 torch.Generator().manual_seed(0))
    chosen = labels != -100
    special = (packed.input_ids == tok.cls_token_id) | (packed.input_ids == tok.sep_token_id)
    assert not (chosen & (special | (packed.attention_mask == 0))).any()
    rate = chosen.sum() / (packed.attention_mask.bool() & ~special).sum()
    assert 0.12 < rate < 0.18
    assert torch.equal(labels[chosen], packed.input_ids[chosen])
    assert torch.equal(masked[~chosen], packed.input_ids[~chosen])
    share_masked = (masked[chosen] == tok.mask_token_id).float().mean()
    assert 0.7 < share_masked < 0.9


def test_masking_always_chooses_a_real_token(model_and_tokenizer, legal_docs):
    """Even when the draw picks nothing: the real token with the lowest draw, never a special one."""
    _, tok = model_and_tokenizer
    packed = pack_corpus(legal_docs, tok, max_length=16)
    ids, mask = packed.input_ids[:2], packed.attention_mask[:2]
    for seed in range(5):
        masked, labels = mask_tokens(ids, mask, tok, 1e-9, torch.Generator().manual_seed(seed))
        chosen = labels != -100
        assert chosen.sum() == 1
        assert ids[chosen].item() not in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
        assert torch.equal(masked[~chosen], ids[~chosen])


def test_masking_is_the_same_for_the_same_generator_seed(model_and_tokenizer, legal_docs):
    _, tok = model_and_tokenizer
    packed = pack_corpus(legal_docs, tok, max_length=64)
    first, second = (mask_tokens(packed.input_ids, packed.attention_mask, tok, 0.15, torch.Generator().manual_seed(7))
                     for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_masked_only_loss_equals_full_vocabulary_loss(model_and_tokenizer, legal_docs):
    model, tok = model_and_tokenizer
    model.eval()
    packed = pack_corpus(legal_docs, tok, max_length=64)
    ids, mask = packed.input_ids[:4], packed.attention_mask[:4]
    masked, labels = mask_tokens(ids, mask, tok, 0.15, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = masked_lm_loss(resolve_units(model), hidden_states(model, masked, mask), labels)
        reference = model(input_ids=masked, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, reference, atol=1e-5)
