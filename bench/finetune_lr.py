"""Choose `das eval --finetune`'s learning rate on validation splits, never on the test splits.

    python bench/finetune_lr.py BASE DOMAIN_DIR... [--lrs 1e-4,3e-4,1e-3] [--epochs 3] [--max-train 500]

Each domain's capped train split (as `das eval` caps it) is cut into 80% to fine-tune and 20% to score
(das_eval.served.split_for_eval, the served view's split); prints macro-F1 per domain and learning rate, and the mean.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from das_engine.endtask import FinetuneConfig, finetune_task
from das_eval.plan import ScoringSettings
from das_eval.scoring import prepare_domain
from das_eval.served import split_for_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("domains", type=Path, nargs="+")
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train", type=int, default=500)
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    scoring = ScoringSettings(max_train=args.max_train)
    lrs = [float(x) for x in args.lrs.split(",")]
    table: dict[float, list[float]] = {lr: [] for lr in lrs}
    names = []
    for folder in args.domains:
        domain = prepare_domain(folder, scoring)
        names.append(domain.name)
        train, valid = split_for_eval(domain.train, 0.2)
        for lr in lrs:
            config = FinetuneConfig(lr=lr, epochs=args.epochs, batch_size=16, max_length=scoring.max_length, seed=0)
            table[lr].append(finetune_task(args.base, train, config, valid).scores.macro_f1)
            print(f"{domain.name} lr {lr:g}: {table[lr][-1]:.2f}", flush=True)
    print("\n| lr | " + " | ".join(names) + " | mean |\n|---:|" + "---:|" * (len(names) + 1))
    for lr, scores in table.items():
        print(f"| {lr:g} | " + " | ".join(f"{s:.2f}" for s in scores) + f" | {statistics.fmean(scores):.2f} |")


if __name__ == "__main__":
    main()
