"""Where a probe loses after adaptation: which layers' changes cost a domain's end task its points.

    python bench/probe_drop.py BASE ADAPTED DOMAIN_DIR [--max-train 500] [--max-test 500] [--seeds 3]

BASE and ADAPTED are model folders (ADAPTED trained from BASE, e.g. `das eval`'s stage-1 folder, or a `das adapt`
output); DOMAIN_DIR a domain folder (docs/domains.md) whose end task is probed as `das eval` probes it (frozen pooled
features, logistic regression, the same capped train/test splits). It reports the probe's macro-F1 on:

- the base and the adapted model;
- the adapted model with one part put back to the base's weights (the embeddings, or one encoder layer): the points
  that part's change cost;
- the base with one part taken from the adapted model: the points that part's change costs alone;
- the relative change of each part's weights (||W_adapted - W_base|| / ||W_base||).

The probe's training rows are subsampled per seed (90%, balanced as drawn) so the spread of a score is visible.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import torch

from das_eval.plan import ScoringSettings
from das_eval.scoring import PreparedDomain, prepare_domain

PART = re.compile(r"(embeddings|encoder\.layer\.(\d+))\.")


def part_of(key: str) -> str | None:
    """'embeddings', 'layer N', or None (the MLM head, pooler: not on the probe's path)."""
    match = PART.search(key)
    if match is None:
        return None
    return "embeddings" if match.group(1) == "embeddings" else f"layer {match.group(2)}"


def probe_f1(model, tokenizer, domain: PreparedDomain, scoring: ScoringSettings, seeds: int) -> list[float]:
    from das_engine.endtask import ProbeConfig, pooled_features, probe_task
    from das_formats.task_data import LabeledSet

    train_x = pooled_features(model, tokenizer, domain.train.texts, max_length=scoring.max_length)
    test_x = pooled_features(model, tokenizer, domain.test.texts, max_length=scoring.max_length)
    scores = []
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randperm(len(domain.train), generator=generator)[: int(0.9 * len(domain.train))].tolist()
        train = LabeledSet(tuple(domain.train.texts[i] for i in rows), tuple(domain.train.labels[i] for i in rows))
        fit = probe_task(train_x[rows], train, domain.domain.labels,
                         ProbeConfig(l2=scoring.probe_l2, max_iter=scoring.probe_max_iter), test_x, domain.test)
        scores.append(fit.scores.macro_f1)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("adapted", type=Path)
    parser.add_argument("domain", type=Path)
    parser.add_argument("--max-train", type=int, default=500)
    parser.add_argument("--max-test", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from das_engine.loading import load_masked_lm

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    scoring = ScoringSettings(max_train=args.max_train, max_test=args.max_test)
    domain = prepare_domain(args.domain, scoring)
    base, tokenizer = load_masked_lm(args.base)
    adapted, _ = load_masked_lm(args.adapted)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    adapted_state = {k: v.clone() for k, v in adapted.state_dict().items()}
    parts = sorted({p for k in base_state if (p := part_of(k))}, key=lambda p: (p != "embeddings", len(p), p))

    def score(model) -> str:
        values = probe_f1(model, tokenizer, domain, scoring, args.seeds)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.2f} ± {spread:.2f}"

    def change(part: str) -> float:
        keys = [k for k in base_state if part_of(k) == part and base_state[k].is_floating_point()]
        diff = sum(float((adapted_state[k] - base_state[k]).pow(2).sum()) for k in keys) ** 0.5
        return diff / sum(float(base_state[k].pow(2).sum()) for k in keys) ** 0.5

    print(f"probe macro-F1 on {domain.name} ({len(domain.train)} train, {len(domain.test)} test, "
          f"{args.seeds} probe subsamples), base {args.base}, adapted {args.adapted}\n")
    print(f"| model | macro-F1 |\n|---|---:|\n| base | {score(base)} |\n| adapted | {score(adapted)} |\n")
    print("| part | relative weight change | adapted, this part put back to the base | base, this part adapted |")
    print("|---|---:|---:|---:|")
    for part in parts:
        keys = [k for k in base_state if part_of(k) == part]
        adapted.load_state_dict({**adapted_state, **{k: base_state[k] for k in keys}})
        restored = score(adapted)
        base.load_state_dict({**base_state, **{k: adapted_state[k] for k in keys}})
        taken = score(base)
        print(f"| {part} | {change(part):.4f} | {restored} | {taken} |")
    adapted.load_state_dict(adapted_state)
    base.load_state_dict(base_state)


if __name__ == "__main__":
    main()
