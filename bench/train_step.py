"""Time one DAS step against one plain MLM step (same model, batch and length), in one run.

    python bench/train_step.py [--model DIR] [--batch-size 16] [--max-length 128] [--rounds 12]
                               [--variant 'contrastive_samples=4' ...]

Rounds alternate DAS and plain steps so both see the same machine load; medians are reported.
The plain step uses the engine's masked-position MLM head; the Hugging Face full-vocabulary MLM
step is printed for reference. Each `--variant` (DASConfig settings, as in `das eval`'s
'das:key=value,...') adds one more DAS step to the same rounds, with its own ratio line.
The last line is `ratio: X.XX` (DAS with the defaults / plain MLM).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers.utils import logging as hf_logging

from das_data.base_models import resolve_base_model
from das_data.local_corpora import licence_documents, python_doc_documents
from das_engine.data import mask_tokens, pack_corpus
from das_engine.importance import domain_importance_raw, general_importance_raw, normalise, sample_batches
from das_engine.loading import load_masked_lm
from das_engine.mlm import hidden_states, masked_lm_loss
from das_engine.softmask import SoftMask
from das_engine.train_step import das_loss, optimizer_step
from das_engine.units import resolve_units
from das_eval.methods import check_overrides, parse_settings
from das_formats.config import DASConfig
from das_settings import get_settings


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--importance-samples", type=int, default=256)
    parser.add_argument("--mask-mode", default="update")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE,...",
                        help="a DAS variant to time beside the defaults (repeatable)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    folder = resolve_base_model(args.model, get_settings().models_dir)
    _, tokenizer = load_masked_lm(folder)
    config = DASConfig(batch_size=args.batch_size, max_length=args.max_length, mask_mode=args.mask_mode)
    configs = {"das": config}
    for text in args.variant:
        overrides = parse_settings(text, what=f"--variant {text!r}")
        configs[f"das:{text}"] = check_overrides({**config.to_dict(), **overrides, "seed": 0}, what=text)
    embeddings = any(c.protect_embeddings for c in configs.values())
    packed = pack_corpus(licence_documents() + python_doc_documents(), tokenizer, config.max_length)
    ids, mask = packed.input_ids[: config.batch_size], packed.attention_mask[: config.batch_size]
    masked, labels = mask_tokens(ids, mask, tokenizer, config.mlm_probability, torch.Generator().manual_seed(0))
    ids, mask, masked, labels = (t.to(device) for t in (ids, mask, masked, labels))
    tokens = int(mask.sum())

    models = {name: load_masked_lm(folder)[0].to(device).train() for name in (*configs, "mlm", "hf")}
    units = {name: resolve_units(m) for name, m in models.items()}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in models.items()}
    batches = sample_batches(packed, args.importance_samples, config.importance_batch_size, seed=0)
    batches = [tuple(t.to(device) for t in b) for b in batches]

    def importance_pass(kind: str):
        start = time.perf_counter()
        if kind == "general":
            raw = general_importance_raw(models["das"], units["das"], batches, embeddings=embeddings)
        else:
            raw = domain_importance_raw(models["das"], units["das"], batches, tokenizer, 0.15, seed=0,
                                        embeddings=embeddings)
        sync()
        return normalise(raw, config.negative_rule), time.perf_counter() - start

    importance, general_s = importance_pass("general")
    _, domain_s = importance_pass("domain")
    previous = importance.map(lambda t: t.to(device))
    softmasks = {name: SoftMask.build(units[name], previous, embeddings=c.protect_embeddings)
                 for name, c in configs.items()}

    def das_step(name: str):
        c = configs[name]
        loss, _ = das_loss(models[name], units[name], ids, masked, mask, labels, previous, c)
        loss.backward()
        optimizer_step(models[name], optimizers[name], softmasks[name], c)
        sync()

    def mlm_step():
        masked_lm_loss(units["mlm"], hidden_states(models["mlm"], masked, mask), labels).backward()
        optimizer_step(models["mlm"], optimizers["mlm"], None, config)
        sync()

    def hf_step():
        models["hf"](input_ids=masked, attention_mask=mask, labels=labels).loss.backward()
        optimizer_step(models["hf"], optimizers["hf"], None, config)
        sync()

    steps = {**{name: (lambda n=name: das_step(n)) for name in configs}, "mlm": mlm_step, "hf": hf_step}
    for fn in steps.values():  # warm-up
        fn(), fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            times[name].append(timed(fn))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"device {device}, torch threads {torch.get_num_threads()}, model {folder}")
    print(f"batch {config.batch_size} x length {config.max_length} ({tokens} real tokens), "
          f"mask_mode {config.mask_mode}, {args.rounds} rounds, medians")
    report(median, tokens, general_s, domain_s, len(batches) * config.importance_batch_size, list(configs))


def report(median: dict[str, float], tokens: int, general_s: float, domain_s: float, n: int,
           variants: list[str]) -> None:
    """The table: each step's median and tokens/s, the importance passes, the ratios; last `ratio: X.XX`."""
    for name, label in (("das", "DAS step (MLM + contrastive + soft-mask)"),
                        ("mlm", "plain MLM step (masked-position head)"),
                        ("hf", "plain MLM step (HF full-vocabulary logits)")):
        print(f"{label:45s} {median[name] * 1e3:8.1f} ms  {tokens / median[name]:10,.0f} tokens/s")
    print(f"{'importance pass, general (KL, 2 passes)':45s} {general_s:8.2f} s   ({n} sequences)")
    print(f"{'importance pass, domain (masked MLM)':45s} {domain_s:8.2f} s   ({n} sequences)")
    print(f"masked-position head speed-up over HF full logits: {median['hf'] / median['mlm']:.2f}x")
    for name in variants[1:]:
        print(f"{name:45s} {median[name] * 1e3:8.1f} ms  ratio {median[name] / median['mlm']:.2f}")
    print(f"ratio: {median['das'] / median['mlm']:.2f}")


if __name__ == "__main__":
    main()
