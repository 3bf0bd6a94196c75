"""docs/store.md's layout block describes every path a store holds: a store with every kind of entry (versions,
a corpus, aliases, a task with its data, model and problems, a version and a task model set aside by repair) holds
no path the block does not name."""

from __future__ import annotations

import re
from pathlib import Path

from task_sets import source_task, write_jsonl

from das_formats.config import DASConfig
from das_formats.task_data import TaskSettings
from das_settings import Settings
from model_store import maintenance
from model_store.aliases import AliasStore
from model_store.store import ModelStore
from model_store.tasks import TaskStore
from pipeline.adaptation import adapt_active
from pipeline.endtasks import fit_task_model
from pipeline.task_intake import check_task_files, store_task_data

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDERS = {"VERSION": r"v\d{4}", "SHA256": r"[0-9a-f]{64}", "NAME": r"[a-z0-9][a-z0-9_-]*",
                "GENERATION": r"[0-9a-f]{16}", "TIME": r"\d{8}T\d{6}Z"}


def documented_patterns() -> list[re.Pattern]:
    """Each entry of the layout block as a regex: a name ending in '/' covers everything below it."""
    text = (ROOT / "docs" / "store.md").read_text(encoding="utf-8")
    block = text[text.index("```\nSTORE/\n") + len("```\nSTORE/\n"):]
    block = block[: block.index("```")]
    patterns = []
    for line in block.splitlines():
        if not line.startswith("  ") or line.startswith("   "):
            continue  # a continuation of the line above
        entry = line.split()[0]
        regex = re.escape(entry)
        for word, part in PLACEHOLDERS.items():
            regex = regex.replace(word, part)
        patterns.append(re.compile(regex + (".+" if entry.endswith("/") else "")))
    return patterns


def test_every_path_of_a_store_is_in_the_documented_layout(tmp_path, bert_dir, legal_docs):
    store = ModelStore.open(tmp_path / "store")
    store.init_base(bert_dir, "embedded")
    corpus = tmp_path / "legal.txt"
    corpus.write_text("\n".join(legal_docs[:40]) + "\n", encoding="utf-8")
    small = DASConfig(steps=1, batch_size=2, max_length=32, importance_samples=4, importance_batch_size=2)
    version = adapt_active(store, corpus, "legal", small, work_dir=tmp_path / "work").id
    AliasStore(store).set("staging", version)
    sets = source_task(n_train=20, n_eval=10)
    train, evals = write_jsonl(tmp_path / "train.jsonl", sets["train"]), write_jsonl(tmp_path / "eval.jsonl",
                                                                                     sets["eval"])
    train_set, eval_set = check_task_files("probe", TaskSettings(), train, evals, Settings())
    tasks = TaskStore(store)
    definition = tasks.put_definition(store_task_data(store, "source", "probe", TaskSettings(),
                                                      (train, train_set, "train.jsonl"),
                                                      (evals, eval_set, "eval.jsonl")))
    fit_task_model(store, definition, version)
    tasks.note_problem(definition, version, "a problem, written down")
    # damage a task model of the base and the newest version's manifest: repair sets both aside
    fit_task_model(store, definition, "v0001")
    model = tasks.sound_model("v0001", "source", definition.generation)
    next(p for p in tasks.model_dir(model).iterdir() if p.suffix == ".safetensors").write_bytes(b"damaged")
    tasks.repair()
    (tmp_path / "store" / "versions" / version / "manifest.json").write_text("{not json", encoding="utf-8")
    maintenance.repair(store)

    root = tmp_path / "store"
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert any(p.startswith("damaged/task_models/") for p in paths)  # the store below holds every kind
    assert any(p.startswith(f"damaged/{version}-") for p in paths) and "ALIASES" in paths
    assert any(p.endswith(".problems.json") for p in paths) and any(p.startswith("corpora/") for p in paths)
    patterns = documented_patterns()
    undocumented = [p for p in paths if not any(pattern.fullmatch(p) for pattern in patterns)]
    assert not undocumented, f"docs/store.md's layout does not describe {undocumented}"
