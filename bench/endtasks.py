"""Both end-task kinds on domain folders: macro-F1, accuracy, fit time and serving throughput.

    python bench/endtasks.py DOMAIN_DIR... [--base embedded] [--epochs 3] [--out results.json]

For each domain (`das data build` makes the four of ../shared/DOMAINS.md): the probe (frozen
backbone, logistic regression on the pooled features the service serves) and the finetune kind
(every parameter tuned, the paper's protocol), each fitted on train.jsonl and scored on
test.jsonl. Fit time counts what a fit job does (features + probe; or the whole fine-tuning).
Serving throughput is texts/s of the served path (serving.model.LoadedModel.predict, what a
predict request runs) in this process at batch 32, no HTTP: one backbone pass plus the probe
head, or the fine-tuned model's own pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from das_data.base_models import resolve_base_model
from das_data.domain_folder import read_domain
from das_engine import endtask
from das_engine.loading import load_masked_lm
from das_formats.task_data import LabeledSet, TaskSettings
from das_settings import get_settings
from model_store.tasks import TaskData, TaskDefinition, TaskModel
from serving.model import LoadedModel
from serving.tasks import ServedTask, TaskSet

BATCH = 32


def throughput(run, texts: list[str], seconds: float = 3.0) -> float:
    """Texts per second of `run(batch)` over batches of BATCH texts, after one warm-up batch."""
    run(texts[:BATCH])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = texts[done % max(1, len(texts) - BATCH):][:BATCH]
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def served(base: str, labels: list[str], kind: str, max_length: int, head=None, classifier=None):
    """The served path: the backbone with one task model, as a predict request runs it."""
    loaded = LoadedModel.load("bench", Path(base))
    record = TaskModel(task="t", version="bench", generation="-", kind=kind, labels=labels, files={})
    definition = TaskDefinition("t", kind, labels, TaskData("-", 0), None, {"max_length": max_length})
    task_set = TaskSet({"t": ServedTask(definition, record, head=head, classifier=classifier)})
    return loaded.with_tasks(task_set)


def bench_domain(folder: Path, base: str, epochs: int, max_length: int) -> dict:
    domain = read_domain(folder)
    train = LabeledSet(tuple(e.text for e in domain.train), tuple(e.label for e in domain.train))
    test = LabeledSet(tuple(e.text for e in domain.test), tuple(e.label for e in domain.test))
    labels = list(train.label_names)
    row: dict = {"domain": domain.name, "labels": len(labels), "train": len(train), "test": len(test)}

    model, tokenizer = load_masked_lm(base)
    model.eval()
    served_length = endtask.served_max_tokens(model.config)  # probes read texts as the service does
    test_x = endtask.pooled_features(model, tokenizer, test.texts, max_length=served_length)
    started = time.perf_counter()
    features = endtask.pooled_features(model, tokenizer, train.texts, max_length=served_length)
    fit = endtask.probe_task(features, train, labels, endtask.ProbeConfig(), test_x, test)  # the service's path
    row["probe_fit_s"] = time.perf_counter() - started  # train features and the fit (and scoring, a matmul)
    row |= {"probe_macro_f1": fit.scores.macro_f1, "probe_accuracy": fit.scores.accuracy}
    probe = served(base, labels, "probe", max_length, head=fit.head)
    row["probe_texts_per_s"] = throughput(lambda batch: probe.predict(batch, ["t"]), list(test.texts))

    config = endtask.FinetuneConfig(epochs=epochs, max_length=max_length)
    tuned_fit = endtask.finetune_task(Path(base), train, config, test)  # the service's path
    row["finetune_fit_s"] = tuned_fit.fit_seconds
    row |= {"finetune_macro_f1": tuned_fit.scores.macro_f1, "finetune_accuracy": tuned_fit.scores.accuracy}
    tuned = served(base, labels, "finetune", max_length, classifier=tuned_fit.model)
    row["finetune_texts_per_s"] = throughput(lambda batch: tuned.predict(batch, ["t"]), list(test.texts))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("domains", nargs="+", type=Path)
    parser.add_argument("--base", default="embedded", help="model folder, or 'embedded'")
    parser.add_argument("--epochs", type=int, default=TaskSettings.epochs, help="finetune epochs (the paper's)")
    parser.add_argument("--max-length", type=int, default=TaskSettings.max_length)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    base = resolve_base_model(args.base, get_settings().models_dir)
    print(f"base {args.base}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"finetune {args.epochs} epochs, max_length {args.max_length}", file=sys.stderr)
    rows = []
    for folder in args.domains:
        rows.append(bench_domain(folder, base, args.epochs, args.max_length))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print("| domain | labels | train / test | probe macro-F1 | probe acc | probe fit s | probe texts/s "
          "| finetune macro-F1 | finetune acc | finetune fit s | finetune texts/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['domain']} | {r['labels']} | {r['train']} / {r['test']} | {r['probe_macro_f1']:.1f} "
              f"| {r['probe_accuracy']:.1f} | {r['probe_fit_s']:.1f} | {r['probe_texts_per_s']:.0f} "
              f"| {r['finetune_macro_f1']:.1f} | {r['finetune_accuracy']:.1f} | {r['finetune_fit_s']:.0f} "
              f"| {r['finetune_texts_per_s']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
