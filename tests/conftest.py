"""Shared fixtures: the real packaged BERT, a tiny random RoBERTa, and real text corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing
from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

from das_data.base_models import ensure_embedded_model
from das_data.local_corpora import licence_documents, python_doc_documents
from das_engine.loading import load_masked_lm
from das_settings import get_settings

torch.set_num_threads(2)
TEST_TIMEOUT_S = float(os.environ.get("DAS_TEST_TIMEOUT_S", "600"))  # one test; a hang fails fast, with its stacks


@pytest.fixture(autouse=True)
def _hang_fails_fast(request):
    """A test that runs past TEST_TIMEOUT_S (a hang: a lock, a read that never returns) ends the run at once, with
    its name and every thread's stack on the real stderr, instead of holding CI until CI's own limit."""
    import faulthandler
    import sys
    import threading

    capture = request.config.pluginmanager.getplugin("capturemanager")
    limit = TEST_TIMEOUT_S * (6 if request.node.get_closest_marker("slow") else 1)  # the long ones: an hour

    def fail() -> None:
        with capture.global_and_fixture_disabled():
            sys.stderr.write(f"\n{request.node.nodeid} ran over {limit:g} s (DAS_TEST_TIMEOUT_S); the "
                             "stacks of its threads:\n")
            sys.stderr.flush()
            faulthandler.dump_traceback(sys.stderr, all_threads=True)
        os._exit(3)

    timer = threading.Timer(limit, fail)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


@pytest.fixture(scope="session")
def legal_docs() -> list[str]:
    return licence_documents()[:120]


@pytest.fixture(scope="session")
def code_docs() -> list[str]:
    return python_doc_documents(limit=200)[:120]


@pytest.fixture(scope="session")
def bert_dir() -> Path:
    """The embedded base model (`make test` fetches it first; this only verifies it)."""
    return ensure_embedded_model(get_settings().models_dir)


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory, legal_docs, code_docs) -> Path:
    """A tiny random RobertaForMaskedLM with a byte-level BPE tokenizer trained on the test text."""
    folder = tmp_path_factory.mktemp("tiny-roberta")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(legal_docs + code_docs, vocab_size=600, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", mask_token="<mask>", model_max_length=128)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=140,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=2)
    RobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(params=["bert", "roberta"])
def family_dir(request, bert_dir, roberta_dir) -> Path:
    return bert_dir if request.param == "bert" else roberta_dir


@pytest.fixture
def model_and_tokenizer(family_dir):
    return load_masked_lm(family_dir)


@pytest.fixture
def corpus_file(tmp_path, legal_docs) -> Path:
    path = tmp_path / "legal.txt"
    path.write_text("\n".join(legal_docs) + "\n", encoding="utf-8")
    return path


TEST_REDIS_URL_VARIABLE = "DAS_TEST_REDIS_URL"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"  # where .ci/run starts one if none answers


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis the tests use: $DAS_TEST_REDIS_URL, by default redis://127.0.0.1:6379/0. No test
    is skipped for want of it: if it does not answer, each test that needs it fails and says so."""
    import redis

    url = os.environ.get(TEST_REDIS_URL_VARIABLE) or DEFAULT_TEST_REDIS_URL
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, ValueError) as err:
        refused = f"{type(err).__name__}: {err}"
    else:
        return url
    pytest.fail(f"no Redis answers at {url} ({refused}); the tests need a real Redis: start one there "
                f"or set {TEST_REDIS_URL_VARIABLE} to the URL of one they may use", pytrace=False)


@pytest.fixture
def service_settings(tmp_path):
    """Settings of a service on a fresh store in tmp_path (embedded mode unless a test adds a broker)."""
    from das_settings import Settings

    return Settings(store=str(tmp_path / "store"), work_dir=tmp_path / "work", models_dir=get_settings().models_dir,
                    poll_interval_s=0.5, heartbeat_s=1.0, max_wait_ms=2.0)


@pytest.fixture
def small_corpus(tmp_path, legal_docs) -> Path:
    path = tmp_path / "legal-upload.txt"
    path.write_text("\n".join(legal_docs[:60]) + "\n", encoding="utf-8")
    return path
