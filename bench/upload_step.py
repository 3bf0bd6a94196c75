"""Time the upload step kinds against a plain MLM step (next-token on a causal base), in one run.

    python bench/upload_step.py [--model embedded] [--batch-size 16] [--max-length 128] [--rounds 12]

Each round runs one step of each kind, in turn, through the trainer's own `train_step` (so a step with replay
draws its replay rows from a second corpus, as in a real run):
- plain: plain MLM (`softmask=False`);
- default: what an upload gets (das_formats.config.UPLOAD_DEFAULTS);
- softmask: replay and the soft-mask against the cumulative importance (word-embedding rows included, as
  `protect_embeddings` has it), no contrastive term (`contrastive_weight=0`);
- das-k4: DAS with the contrastive passes on the first 4 samples of each batch (`contrastive_samples=4`);
- das: DASConfig's defaults, the soft-mask and the contrastive passes on every sample.
Medians are reported with their ratio to the plain step, measured in the same rounds, so the machine's load
falls on all of them alike. Per-version costs (the importance passes, merge_auto's scoring) are not per step:
`das eval` records them per stage.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers.utils import logging as hf_logging

from das_data.base_models import resolve_base_model
from das_data.local_corpora import licence_documents, python_doc_documents
from das_engine.data import pack_corpus
from das_engine.importance import general_importance_raw, normalise, sample_batches
from das_engine.loading import load_lm
from das_engine.softmask import SoftMask
from das_engine.train_step import train_step
from das_engine.training_data import TrainingData, replay_rows
from das_engine.units import resolve_units
from das_formats.config import DASConfig, upload_config
from das_settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    shared = {"batch_size": args.batch_size, "max_length": args.max_length, "importance_samples": 32}
    replayed = {**shared, "replay_fraction": 0.25}
    configs = {"plain": DASConfig(softmask=False, **shared), "default": upload_config(shared),
               "softmask": DASConfig(contrastive_weight=0.0, **replayed),
               "das-k4": DASConfig(contrastive_samples=4, **replayed), "das": DASConfig(**shared)}
    folder = resolve_base_model(args.model, get_settings().models_dir)
    model, tokenizer, kind = load_lm(folder)  # a masked LM's step (MLM) or a causal one's (next token)
    units = resolve_units(model)
    domain = pack_corpus(licence_documents(), tokenizer, args.max_length, kind=kind)
    replay = pack_corpus(python_doc_documents(), tokenizer, args.max_length, kind=kind)
    importance = normalise(general_importance_raw(model, units, sample_batches(domain, 32, 16, 0), embeddings=True),
                           "clamp")
    setups = {}
    for name, config in configs.items():
        rows = replay_rows(config, True)
        data = TrainingData(domain, replay if rows else None, rows)
        softmask = SoftMask.build(units, importance, embeddings=config.protect_embeddings) if config.softmask else None
        setups[name] = (config, data, softmask, importance if config.softmask else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)  # the weights barely move: every round alike
    times: dict[str, list[float]] = {name: [] for name in setups}
    model.train()
    for round_ in range(args.rounds + 2):
        for name, (config, data, softmask, previous) in setups.items():
            started = time.perf_counter()
            train_step(model, units, tokenizer, optimizer, softmask, previous, data, config, round_,
                       torch.device("cpu"))
            if round_ >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - started)
    plain = statistics.median(times["plain"])
    print(f"model {args.model} ({kind}), batch {args.batch_size} x {args.max_length}, {args.rounds} rounds, CPU "
          f"threads {torch.get_num_threads()}")
    for name, values in times.items():
        median = statistics.median(values)
        config = configs[name]
        weight = config.contrastive_weight if config.softmask else 0
        print(f"{name:8s} {median * 1000:8.1f} ms  {median / plain:5.2f}x plain  ({config.replay_fraction:.2f} "
              f"replay, softmask {config.softmask}, contrastive weight {weight} on "
              f"{config.contrastive_samples or config.batch_size} samples)")


if __name__ == "__main__":
    main()
