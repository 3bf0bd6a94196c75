"""One continual DAS step: adapt a language model (masked or causal: units.FAMILIES) to one domain corpus with
soft-masking.

Read top to bottom: set-up, data, importance the step trains against, optimizer, resume, the
training loop (stop, batch, forward, backward, mask, step, log, checkpoint), then the domain
importance, EMax accumulation and the outputs.

Outputs in `out_dir`: a Hugging Face model folder (safetensors), importance_in.safetensors (the
I(<=t-1) it trained against), domain_importance.safetensors (I(t)), importance.safetensors
(I(<=t), handed on) and train_metrics.json.

A work folder belongs to one run: its settings, corpus and base model (by fingerprint) are
recorded in the checkpoints and in train_metrics.json, and a call with other ones is refused.

Two settings change what runs (see DASConfig): `softmask=False` (NCL, plain continual MLM) skips
both importance passes, the soft-mask and the contrastive term, and only hands an incoming
importance on (importance_in and importance, no domain_importance; no files without one);
`protect_embeddings=True` adds the word-embedding rows to both importance passes, the soft-mask
and every importance file (key "embeddings", [1, V]).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from das_formats.config import DASConfig, ranks_problem
from das_formats.corpus import read_corpus
from das_formats.fingerprint import base_fingerprint, corpus_fingerprint
from das_formats.layout import DOMAIN_IMPORTANCE, IMPORTANCE, IMPORTANCE_IN, METRICS

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .data import PackedCorpus, step_seed
from .distributed import Ranks, current
from .importance import (
    accumulate,
    domain_importance_raw,
    general_importance_raw,
    importance_dropout,
    normalise,
    sample_batches,
)
from .loading import load_lm
from .merge import TaskJudge, merge_candidate, parent_state
from .mlm import LOSS_PART
from .precision import check_precision
from .run_state import (
    CHECKPOINTS,
    MADE_FROM,
    AdaptResult,
    Progress,
    RunState,
    check_checkpoints,
    finished_run,
    save_model,
)
from .softmask import SoftMask
from .train_step import StepLoss, data_parallel, to_device, train_step
from .training_data import TrainingData
from .units import ModelUnits, UnitTensors, resolve_units


def adapt(base: str | Path, corpus: str | Path | list[str], out_dir: str | Path, config: DASConfig, *,
          prev_importance: str | Path | None = None, domain: str = "domain", device: str | torch.device = "cpu",
          replay: dict[str, list[str]] | None = None, judge_tasks: TaskJudge | None = None,
          on_progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None, base_digests: dict[str, str] | None = None,
          token_cache: Path | None = None) -> AdaptResult:
    """Run one continual DAS step; resumes from `out_dir/checkpoints` when a checkpoint is there.

    `corpus` is a corpus file (see corpus.read_corpus) or its documents, already read. `device` is
    where the model trains ("cpu", "cuda", "cuda:1"); the data is prepared on the CPU and moved.
    `replay` holds the documents of each corpus the lineage learned before (name -> documents): what
    `replay_fraction` draws from, and what `merge_auto` checks for forgetting. `judge_tasks` tells
    `merge_auto` which registered tasks a candidate drops (the service's; none: held-out losses decide).
    `base_digests`: the sha256 of the base folder's files, where the caller has just checked them (a store version's
    manifest), so the base's fingerprint does not read them again. `token_cache`: a folder where the replay corpora's
    token ids are kept by their documents' and the tokenizer's digests (das_engine.token_cache), so a lineage's
    earlier corpora are tokenised once, not at every upload.
    """
    ranks = current()  # 0 of 1, or a rank of a torch.distributed run (see distributed.py)
    problem = ranks_problem(config, ranks.world)
    if problem:
        raise ValueError(problem)
    report = on_progress if on_progress is not None and ranks.main else (lambda p: None)
    stop = should_stop or (lambda: False)
    out_dir, wall_start = Path(out_dir), time.perf_counter()
    ckpt_dir = out_dir / CHECKPOINTS
    documents = corpus if isinstance(corpus, list) else read_corpus(corpus)
    uses_replay = config.replay_fraction > 0 or config.merge_auto  # otherwise the run is the same without it
    replay = {name: docs for name, docs in (replay or {}).items() if docs and uses_replay}
    made_from = _made_from(documents, base, replay, base_digests)
    finished = finished_run(out_dir, config, made_from)
    if finished is not None:  # idempotent: a completed run is not trained again
        return finished
    check_checkpoints(ckpt_dir, config, made_from)  # before anything is loaded
    device = torch.device(device)
    check_precision(config.precision, device)
    s = _set_up(base, documents, replay, out_dir, config, prev_importance, made_from, device, ranks, report,
                token_cache)

    # --- training loop ---
    s.model.train()
    for step in range(s.run.start, config.steps):
        if ranks.any(stop(), device):  # a stop asked on rank 0 stops every rank at this step
            if step > s.run.start and ranks.main:
                save_checkpoint(ckpt_dir, step, s.model, s.optimizer, s.run.checkpoint_state(config, made_from))
            return AdaptResult("cancelled", out_dir, step, {"history": s.run.history})
        t0 = time.perf_counter()
        parts, batch_tokens = train_step(s.model, s.units, s.tokenizer, s.optimizer, s.softmask, s.previous, s.data,
                                         config, step, device, ranks, s.wrapped)
        s.run.count(step, config, parts, batch_tokens, time.perf_counter() - t0, report)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps \
                and ranks.main:
            save_checkpoint(ckpt_dir, step + 1, s.model, s.optimizer, s.run.checkpoint_state(config, made_from))

    # --- after training: the domain importance, EMax, the merge and the outputs ---
    return _finish(s, base, out_dir, domain, config, made_from, device, ranks, judge_tasks, report, wall_start)


def _finish(s: _Session, base: str | Path, out_dir: Path, domain: str, config: DASConfig, made_from: dict[str, str],
            device: torch.device, ranks: Ranks, judge_tasks: TaskJudge | None, report: Callable[[Progress], None],
            wall_start: float) -> AdaptResult:
    """I(t) of the trained model and EMax (plain MLM: the incoming importance, handed on); on rank 0, the candidate
    (the trained model, or its merge toward the parent) and the outputs."""
    ckpt_dir = out_dir / CHECKPOINTS
    domain_importance, cumulative = None, s.importance_in
    if config.uses_importance:
        domain_importance = _domain_importance(s.model, s.units, s.tokenizer, s.data.packed, config, device, s.run,
                                               report)
        cumulative = accumulate(s.importance_in, domain_importance)
    if not ranks.main:  # rank 0 merges and writes the outputs
        return AdaptResult("completed", out_dir, config.steps, {})

    # --- the candidate: the trained model, or its merge toward the parent ---
    if s.parent is not None:
        report(Progress("merge", 0, 1))
        s.run.merge = merge_candidate(s.model, s.tokenizer, s.parent, s.units, s.importance_in, config, s.data,
                                      judge_tasks, s.run)

    # --- outputs ---
    report(Progress("saving", 0, 1))
    save_model(out_dir, s.model, s.tokenizer, base, {IMPORTANCE_IN: s.importance_in,
                                                     DOMAIN_IMPORTANCE: domain_importance, IMPORTANCE: cumulative})
    metrics = s.run.metrics(domain, base, config, s.data, s.units, made_from, device, time.perf_counter() - wall_start)
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    last = s.run.history[-1] if s.run.history else {}
    final = {k: v for k, v in last.items() if k in ("loss", LOSS_PART[s.units.kind], "contrastive")}
    report(Progress("done", 1, 1, final))
    return AdaptResult("completed", out_dir, config.steps, metrics)


def _made_from(documents: list[str], base: str | Path, replay: dict[str, list[str]],
               base_digests: dict[str, str] | None) -> dict[str, str]:
    """The fingerprints of a run's inputs: a work folder made from other ones is refused, never resumed."""
    return {"corpus_sha256": corpus_fingerprint(documents), "base_sha256": base_fingerprint(base, base_digests),
            **({"replay_sha256": corpus_fingerprint([d for docs in replay.values() for d in docs])} if replay else {})}


@dataclass
class _Session:
    """What a run trains with, set up once: the model, its units and data, the importance it trains against and its
    soft-mask, the optimizer (resumed), the parent a merge goes back toward, and on a rank its DDP-wrapped loss."""

    model: nn.Module
    tokenizer: Any
    units: ModelUnits
    data: TrainingData
    run: RunState
    importance_in: UnitTensors | None
    previous: UnitTensors | None
    softmask: SoftMask | None
    optimizer: torch.optim.Optimizer
    parent: dict | None
    wrapped: nn.Module | None


def _set_up(base: str | Path, documents: list[str], replay: dict[str, list[str]], out_dir: Path, config: DASConfig,
            prev_importance: str | Path | None, made_from: dict[str, str], device: torch.device, ranks: Ranks,
            report: Callable[[Progress], None], token_cache: Path | None = None) -> _Session:
    """Model (and the parent a merge goes back toward), units, data; the importance the step trains against,
    I(<=t-1) (I(0) for the first domain), and its soft-mask; the optimizer, resumed from the latest checkpoint."""
    ckpt_dir = out_dir / CHECKPOINTS
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    model, tokenizer, _ = load_lm(base)
    model.to(device)
    parent = parent_state(model) if config.merges else None
    units = resolve_units(model)
    t1 = time.perf_counter()
    data = TrainingData.prepare(documents, replay, tokenizer, config, token_cache, kind=units.kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = RunState(timings={"load_s": t1 - t0, "data_s": time.perf_counter() - t1}, ranks=ranks.world)
    importance_in = _importance_in(model, units, data.packed, config, prev_importance, ckpt_dir, device, report, run)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if ranks.main:  # rank 0 writes the checkpoints folder; the others read it when they resume
        (ckpt_dir / MADE_FROM).write_text(json.dumps(made_from))
        if config.uses_importance:
            importance_in.save(ckpt_dir / IMPORTANCE_IN)
    previous, softmask = None, None
    if config.softmask:
        previous = importance_in.to(device)
        softmask = SoftMask.build(units, previous, embeddings=config.protect_embeddings,
                                  strength=config.softmask_strength)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:  # its settings and fingerprints were checked before loading the model
        ckpt = load_checkpoint(latest, model, optimizer)
        run.resume(ckpt.step, ckpt.state)
    wrapped = data_parallel(StepLoss(model, units, previous, config), device) if ranks.distributed else None
    return _Session(model, tokenizer, units, data, run, importance_in, previous, softmask, optimizer, parent, wrapped)


def _batches_reported(phase: str, report: Callable[[Progress], None]) -> Callable[[int, int], None]:
    """An importance pass's progress, as batches done of its batches."""
    return lambda done, total: report(Progress(phase, done, total))


def _domain_importance(model: nn.Module, units: ModelUnits, tokenizer, packed: PackedCorpus, config: DASConfig,
                       device: torch.device, run: RunState, report: Callable[[Progress], None]) -> UnitTensors:
    """I(t): what the trained model needs for its domain (the LM-loss pass on the domain's own blocks: MLM or
    next-token)."""
    t0 = time.perf_counter()
    batches = sample_batches(packed, config.importance_samples, config.importance_batch_size,
                             step_seed(config.seed, config.steps, 5))
    report(Progress("domain-importance", 0, len(batches)))
    raw = domain_importance_raw(model, units, to_device(batches, device), tokenizer, config.mlm_probability,
                                step_seed(config.seed, config.steps, 6), precision=config.precision,
                                embeddings=config.protect_embeddings,
                                on_batch=_batches_reported("domain-importance", report))
    importance = normalise(raw, config.negative_rule).to("cpu")
    run.timings["domain_importance_s"] = time.perf_counter() - t0
    return importance


def _importance_in(model: nn.Module, units: ModelUnits, packed: PackedCorpus, config: DASConfig,
                   prev_importance: str | Path | None, ckpt_dir: Path, device: torch.device,
                   report: Callable[[Progress], None], run: RunState) -> UnitTensors | None:
    """I(<=t-1): the previous version's cumulative importance, the one an interrupted run saved, or (the first
    domain) I(0) from the general-importance pass. Plain MLM (softmask=False) trains against none: an
    incoming one is only handed on."""
    saved_in = ckpt_dir / IMPORTANCE_IN
    incoming = None if prev_importance is None else _incoming(prev_importance, units, config)
    if not config.uses_importance:
        importance_in = incoming
    elif saved_in.is_file():
        importance_in = UnitTensors.load(saved_in)
        if incoming is None:  # the I(0) an interrupted run computed, with the dropout it records
            run.importance_dropout = importance_dropout(model, units)
        if incoming is not None and not importance_in.equals(incoming):
            raise ValueError(f"{ckpt_dir} was trained against another importance than {prev_importance}; "
                             f"remove {ckpt_dir} to start over")
    elif incoming is not None:
        importance_in = incoming
    else:
        t0 = time.perf_counter()
        batches = sample_batches(packed, config.importance_samples, config.importance_batch_size,
                                 step_seed(config.seed, 0, 2))
        report(Progress("general-importance", 0, len(batches)))
        run.importance_dropout = importance_dropout(model, units)
        raw = general_importance_raw(model, units, to_device(batches, device), precision=config.precision,
                                     embeddings=config.protect_embeddings,
                                     on_batch=_batches_reported("general-importance", report))
        importance_in = normalise(raw, config.negative_rule).to("cpu")
        run.timings["general_importance_s"] = time.perf_counter() - t0
    if importance_in is not None:
        importance_in.check_shapes(units)
    return importance_in


def _incoming(path: str | Path, units: ModelUnits, config: DASConfig) -> UnitTensors:
    """The importance handed on by the previous version. With protect_embeddings and a file without
    word-embedding rows (its chain never protected them), the rows start at 0: nothing protected."""
    importance = UnitTensors.load(path)
    if config.uses_importance and config.protect_embeddings and importance.embeddings is None:
        importance = importance.with_embeddings(torch.zeros(units.embeddings_shape()))
    return importance
