"""Dynamic int8 quantisation of the encoder on the CPU: its speed and what it does to the end tasks, in one run.

    python bench/int8.py [--model models/minilm-mlm] [--domains data/domains/news,data/domains/legal]
                         [--max-train 500] [--max-test 500] [--batch 32] [--repeats 5]

torch.ao's quantize_dynamic turns the encoder's Linear layers into int8 ones (weights int8 per tensor, activations
quantised per batch); embeddings, LayerNorms and the MLM head stay fp32. For each domain's end task (a labeled
train and test set, docs/domains.md): a probe (the service's logistic regression on the served embeddings) fitted
on fp32 features and scored on fp32 and on int8 features (a task fitted before the switch), and a probe fitted and
scored on int8 features (fitted after); macro-F1 of each, and the share of test predictions that change. Speed:
sequences/s of the encoder at `--batch` over the test texts, fp32 and int8 alternating, medians of `--repeats`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import emit  # noqa: E402

from das_engine.endtask import ProbeConfig, pooled_features, probe_task  # noqa: E402
from das_engine.loading import load_masked_lm  # noqa: E402
from das_engine.task_scores import score  # noqa: E402
from das_eval.plan import ScoringSettings  # noqa: E402
from das_eval.scoring import prepare_domain  # noqa: E402
from das_formats.task_data import label_ids  # noqa: E402
from serving.model import int8_encoder  # noqa: E402


def quantised(model: nn.Module) -> nn.Module:
    """A copy of `model` whose encoder is the one DAS_SERVE_INT8 serves (serving.model.int8_encoder)."""
    clone = copy.deepcopy(model).eval()
    clone.base_model.encoder = int8_encoder(clone.base_model.encoder)
    return clone


def speed(model: nn.Module, tokenizer, texts: list[str], batch: int, max_length: int) -> float:
    """Sequences per second of the encoder over `texts` in batches of `batch`."""
    start = time.perf_counter()
    pooled_features(model, tokenizer, texts, max_length=max_length, batch_size=batch)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/minilm-mlm")
    parser.add_argument("--domains", default="data/domains/news,data/domains/legal")
    parser.add_argument("--max-train", type=int, default=500)
    parser.add_argument("--max-test", type=int, default=500)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model, tokenizer = load_masked_lm(args.model)
    model.eval()
    int8 = quantised(model)
    tasks, texts_for_speed = {}, []
    for folder in args.domains.split(","):
        prepared = prepare_domain(Path(folder), ScoringSettings(max_train=args.max_train, max_test=args.max_test))
        train, test, labels = prepared.train, prepared.test, prepared.domain.labels
        with torch.inference_mode():
            fp32_train = pooled_features(model, tokenizer, train.texts, max_length=args.max_length)
            fp32_test = pooled_features(model, tokenizer, test.texts, max_length=args.max_length)
            int8_train = pooled_features(int8, tokenizer, train.texts, max_length=args.max_length)
            int8_test = pooled_features(int8, tokenizer, test.texts, max_length=args.max_length)
        config = ProbeConfig()
        before = probe_task(fp32_train, train, labels, config)  # fitted on fp32, as a task fitted before the switch
        fp32_pred = before.head(fp32_test).argmax(-1)
        int8_pred = before.head(int8_test).argmax(-1)
        after = probe_task(int8_train, train, labels, config, int8_test, test)
        truth = label_ids(test.labels, labels)
        tasks[prepared.name] = {
            "test_examples": len(test.texts),
            "macro_f1_fp32": round(score(truth, fp32_pred.tolist(), len(labels)).macro_f1, 2),
            "macro_f1_fp32_probe_on_int8_features": round(score(truth, int8_pred.tolist(), len(labels)).macro_f1, 2),
            "macro_f1_int8_probe_on_int8_features": round(after.scores.macro_f1, 2),
            "predictions_changed": round(float((fp32_pred != int8_pred).float().mean()), 4),
            "feature_cosine_mean": round(float((fp32_test * int8_test).sum(-1).mean()), 5),
        }
        texts_for_speed += list(test.texts)
    texts_for_speed = texts_for_speed[: max(args.batch * 8, 256)]
    rates = {"fp32": [], "int8": []}
    with torch.inference_mode():
        speed(model, tokenizer, texts_for_speed[: args.batch], args.batch, args.max_length)  # warm both
        speed(int8, tokenizer, texts_for_speed[: args.batch], args.batch, args.max_length)
        for _ in range(args.repeats):
            rates["fp32"].append(speed(model, tokenizer, texts_for_speed, args.batch, args.max_length))
            rates["int8"].append(speed(int8, tokenizer, texts_for_speed, args.batch, args.max_length))
    fp32, q = statistics.median(rates["fp32"]), statistics.median(rates["int8"])
    emit({"model": args.model, "threads": torch.get_num_threads(), "tasks": tasks,
              "speed": {"sequences_per_s_fp32": round(fp32, 1), "sequences_per_s_int8": round(q, 1),
                        "ratio": round(q / fp32, 2), "runs_fp32": [round(r, 1) for r in rates["fp32"]],
                        "runs_int8": [round(r, 1) for r in rates["int8"]]}}, args.out)


if __name__ == "__main__":
    main()
