"""One continual DAS step: adapt a masked LM to one domain corpus with soft-masking.

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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from das_formats.config import DASConfig, corpus_problem, ranks_problem
from das_formats.corpus import read_corpus, split_by_hash
from das_formats.fingerprint import base_fingerprint, corpus_fingerprint
from das_formats.layout import DOMAIN_IMPORTANCE, IMPORTANCE, IMPORTANCE_IN, METRICS

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .contrastive import contrastive_loss
from .data import PackedCorpus, get_batch, mask_tokens, pack_corpus, step_seed
from .distributed import LossShares, Ranks, current, gather_rows
from .importance import (
    accumulate,
    domain_importance_raw,
    general_importance_raw,
    normalise,
    sample_batches,
)
from .loading import load_masked_lm
from .merge import TaskJudge, merge_candidate, parent_state
from .mlm import hidden_states, masked_lm_loss, mean_pool
from .precision import autocast, check_precision
from .softmask import SoftMask
from .unit_scales import scales_applied
from .units import ModelUnits, UnitTensors, resolve_units

CHECKPOINTS = "checkpoints"
MADE_FROM = "made_from.json"  # in the checkpoints folder: the fingerprints its run was started with


@dataclass
class Progress:
    phase: Literal["general-importance", "train", "domain-importance", "merge", "saving", "done"]
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    tokens_per_s: float = 0.0
    eta_s: float | None = None


@dataclass
class AdaptResult:
    status: Literal["completed", "cancelled"]
    out_dir: Path
    step: int
    metrics: dict


def get_lr(config: DASConfig, step: int) -> float:
    """Linear warm-up, then linear decay to 0 at the last step."""
    warmup = int(config.warmup_ratio * config.steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * max(0.0, (config.steps - step) / max(1, config.steps - warmup))


def das_loss(model: nn.Module, units: ModelUnits, input_ids: torch.Tensor, masked: torch.Tensor,
             attention_mask: torch.Tensor, labels: torch.Tensor, previous: UnitTensors | None,
             config: DASConfig, shares: LossShares | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MLM loss + lambda * InfoNCE(o_full, o_full+, negatives o_prev), passes concatenated on the batch axis.

    With `contrastive_samples=k` only the batch's first k samples get the positive and o_prev passes
    (and are the InfoNCE's anchors); the MLM loss still covers the whole batch.

    The forward passes run in `config.precision`; the loss is fp32. The parts ("loss", "mlm",
    "contrastive") are detached 0-dim tensors: reading them costs a device sync, so the caller
    reads them once per step (see `as_floats`). With `contrastive_weight=0` or `softmask=False`
    it is the MLM loss alone (one pass; `previous` is not read and may be None).

    On a rank of a distributed run (`shares`), the inputs are the rank's rows of the global batch and the loss is
    its share of the global batch's loss (the shares sum to it): the MLM sum over its masked tokens divided by the
    global count, and the InfoNCE over its anchors against every rank's positives and o_prev passes.
    """
    device = units.device
    ranks = shares.ranks if shares is not None else Ranks()
    mlm_total = shares.masked_tokens if shares is not None else None
    if config.contrastive_weight == 0 or not config.softmask:
        with autocast(device, config.precision):
            mlm = masked_lm_loss(units, hidden_states(model, masked, attention_mask), labels, mlm_total)
        return mlm, {"loss": mlm.detach(), "mlm": mlm.detach()}
    # the o_prev scales (units only) must sit beside the activations they scale
    previous = previous.units_only().to(device)
    with autocast(device, config.precision):
        batch = input_ids.shape[0]
        # the samples that get the contrastive passes (this rank's share of them)
        k = min(config.contrastive_samples // ranks.world or batch, batch)
        anchor_ids = masked[:k] if config.mlm_pass_as_anchor else input_ids[:k]
        views = [masked, masked[:k]] if config.mlm_pass_as_anchor else [masked, input_ids[:k], input_ids[:k]]
        with_prev = not config.prev_pass_no_grad
        if with_prev:
            views.append(anchor_ids)
        sizes = [len(v) for v in views]
        mask = torch.cat([attention_mask[:n] for n in sizes])  # (sum(sizes), T)
        scale_ctx = nullcontext()
        if with_prev:  # per-sample scales: ones for the free passes, I(<=t-1) for the o_prev rows
            free = sum(sizes[:-1])
            scales = previous.map(lambda t: torch.cat([torch.ones(free, *t.shape, device=t.device, dtype=t.dtype),
                                                      t.expand(k, *t.shape)]))  # (rows, L, U)
            scale_ctx = scales_applied(units, scales)
        with scale_ctx:
            hidden = hidden_states(model, torch.cat(views), mask)  # (rows, T, D)
        mlm = masked_lm_loss(units, hidden[:batch], labels, mlm_total)
        pooled = mean_pool(hidden, mask).split(sizes)  # one (n, D) per view
        anchor, positive = (pooled[0][:k], pooled[1]) if config.mlm_pass_as_anchor else (pooled[1], pooled[2])
        if with_prev:
            prev = pooled[-1]
        else:
            with torch.no_grad(), scales_applied(units, previous):
                prev = mean_pool(hidden_states(model, anchor_ids, attention_mask[:k]), attention_mask[:k])
        if ranks.distributed:  # every rank's positives and o_prev passes are columns of each anchor's row
            positive, prev = gather_rows(positive, ranks, grad=True), gather_rows(prev, ranks, grad=with_prev)
            contrast = contrastive_loss(anchor, positive, prev, config.temperature, first_target=ranks.rank * k,
                                        reduction="sum") / (k * ranks.world)
        else:
            contrast = contrastive_loss(anchor, positive, prev, config.temperature)
    loss = mlm + config.contrastive_weight * contrast
    return loss, {"loss": loss.detach(), "mlm": mlm.detach(), "contrastive": contrast.detach()}


def as_floats(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """das_loss's parts as Python floats, with one device sync."""
    return dict(zip(parts, torch.stack(list(parts.values())).tolist(), strict=True))


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, softmask: SoftMask | None,
                   config: DASConfig) -> None:
    """Clip, soft-mask (by gradient or by update), step, zero the gradients. No mask: plain training."""
    if config.max_grad_norm is not None:  # clip before masking (masking changes the norm)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    if softmask is None:
        optimizer.step()
    elif config.mask_mode == "grad":
        softmask.scale_gradients()
        optimizer.step()
    else:
        before = softmask.snapshot()
        optimizer.step()
        softmask.scale_updates(before)
    optimizer.zero_grad(set_to_none=True)


def adapt(base: str | Path, corpus: str | Path | list[str], out_dir: str | Path, config: DASConfig, *,
          prev_importance: str | Path | None = None, domain: str = "domain", device: str | torch.device = "cpu",
          replay: dict[str, list[str]] | None = None, judge_tasks: TaskJudge | None = None,
          on_progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> AdaptResult:
    """Run one continual DAS step; resumes from `out_dir/checkpoints` when a checkpoint is there.

    `corpus` is a corpus file (see corpus.read_corpus) or its documents, already read. `device` is
    where the model trains ("cpu", "cuda", "cuda:1"); the data is prepared on the CPU and moved.
    `replay` holds the documents of each corpus the lineage learned before (name -> documents): what
    `replay_fraction` draws from, and what `merge_auto` checks for forgetting. `judge_tasks` tells
    `merge_auto` which registered tasks a candidate drops (the service's; none: held-out losses decide).
    """
    ranks = current()  # 0 of 1, or a rank of a torch.distributed run (see distributed.py)
    problem = ranks_problem(config, ranks.world)
    if problem:
        raise ValueError(problem)
    report = on_progress if on_progress is not None and ranks.main else (lambda p: None)
    stop = should_stop or (lambda: False)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / CHECKPOINTS
    wall_start = time.perf_counter()
    documents = corpus if isinstance(corpus, list) else read_corpus(corpus)
    uses_replay = config.replay_fraction > 0 or config.merge_auto  # otherwise the run is the same without it
    replay = {name: docs for name, docs in (replay or {}).items() if docs and uses_replay}
    made_from = {"corpus_sha256": corpus_fingerprint(documents), "base_sha256": base_fingerprint(base),
                 **({"replay_sha256": corpus_fingerprint([d for docs in replay.values() for d in docs])}
                    if replay else {})}
    finished = _finished_run(out_dir, config, made_from)
    if finished is not None:  # idempotent: a completed run is not trained again
        return finished
    _check_checkpoints(ckpt_dir, config, made_from)  # before anything is loaded
    device = torch.device(device)
    check_precision(config.precision, device)

    # --- set-up: model (and the parent a merge goes back toward), units, data ---
    torch.manual_seed(config.seed)
    model, tokenizer = load_masked_lm(base)
    model.to(device)
    parent = parent_state(model) if config.merges else None
    units = resolve_units(model)
    data = TrainingData.prepare(documents, replay, tokenizer, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = RunState(timings={}, ranks=ranks.world)

    # --- the importance this step trains against, I(<=t-1) (I(0) for the first domain), and its soft-mask ---
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

    # --- optimizer, and resume from the latest checkpoint ---
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:  # its settings and fingerprints were checked before loading the model
        ckpt = load_checkpoint(latest, model, optimizer)
        run.resume(ckpt.step, ckpt.state)
    wrapped = _data_parallel(StepLoss(model, units, previous, config), device) if ranks.distributed else None

    # --- training loop ---
    model.train()
    for step in range(run.start, config.steps):
        if ranks.any(stop(), device):  # a stop asked on rank 0 stops every rank at this step
            if step > run.start and ranks.main:
                save_checkpoint(ckpt_dir, step, model, optimizer, run.checkpoint_state(config, made_from))
            return AdaptResult("cancelled", out_dir, step, {"history": run.history})
        t0 = time.perf_counter()
        parts, batch_tokens = train_step(model, units, tokenizer, optimizer, softmask, previous, data, config,
                                         step, device, ranks, wrapped)
        run.count(step, config, parts, batch_tokens, time.perf_counter() - t0, report)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps \
                and ranks.main:
            save_checkpoint(ckpt_dir, step + 1, model, optimizer, run.checkpoint_state(config, made_from))

    # --- domain importance I(t) of the trained model, and EMax (plain MLM: the incoming importance, handed on) ---
    domain_importance, cumulative = None, importance_in
    if config.uses_importance:
        report(Progress("domain-importance", config.steps, config.steps))
        domain_importance = _domain_importance(model, units, tokenizer, data.packed, config, device, run)
        cumulative = accumulate(importance_in, domain_importance)
    if not ranks.main:  # rank 0 merges and writes the outputs
        return AdaptResult("completed", out_dir, config.steps, {})

    # --- the candidate: the trained model, or its merge toward the parent ---
    if parent is not None:
        report(Progress("merge", config.steps, config.steps))
        run.merge = merge_candidate(model, tokenizer, parent, units, importance_in, config, data, judge_tasks, run)

    # --- outputs ---
    report(Progress("saving", config.steps, config.steps))
    _save_model(out_dir, model, tokenizer, base, {IMPORTANCE_IN: importance_in, DOMAIN_IMPORTANCE: domain_importance,
                                                  IMPORTANCE: cumulative})
    metrics = run.metrics(domain, base, config, data, units, made_from, device, time.perf_counter() - wall_start)
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    final = {k: v for k, v in (run.history[-1] if run.history else {}).items() if k in ("loss", "mlm", "contrastive")}
    report(Progress("done", config.steps, config.steps, final))
    return AdaptResult("completed", out_dir, config.steps, metrics)


VALIDATION_SALT, VALIDATION_FRACTION, VALIDATION_MAX = "das-merge-validation", 0.05, 100


@dataclass
class TrainingData:
    """What a run trains on: the domain's blocks, the replay blocks (drawn `replay_rows` per batch), and, for
    merge_auto, the validation documents kept out of both (the new domain's, and each earlier corpus')."""

    packed: PackedCorpus
    replay: PackedCorpus | None = None
    replay_rows: int = 0
    replay_documents: dict[str, int] = field(default_factory=dict)  # earlier corpus -> documents drawn from
    validation_new: list[str] = field(default_factory=list)
    validation_old: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def prepare(cls, documents: list[str], replay: dict[str, list[str]], tokenizer, config: DASConfig) -> TrainingData:
        validation_new, validation_old = [], {}
        if config.merge_auto:  # the same documents are kept out by every run of a lineage (a hash, not an order)
            problem = corpus_problem(config, documents)
            if problem:
                raise ValueError(problem)
            validation_new, documents = split_by_hash(documents, VALIDATION_SALT, VALIDATION_FRACTION, VALIDATION_MAX)
            split = {name: split_by_hash(docs, VALIDATION_SALT, VALIDATION_FRACTION, VALIDATION_MAX)
                     for name, docs in replay.items()}
            validation_old = {name: held for name, (held, _) in split.items()}
            replay = {name: rest for name, (_, rest) in split.items() if rest}
        rows = replay_rows(config, bool(replay))
        packed_replay = pack_corpus([d for docs in replay.values() for d in docs], tokenizer, config.max_length) \
            if rows else None
        return cls(pack_corpus(documents, tokenizer, config.max_length), packed_replay, rows,
                   {name: len(docs) for name, docs in replay.items()} if rows else {}, validation_new, validation_old)


def replay_rows(config: DASConfig, available: bool) -> int:
    """Rows of each batch drawn from the earlier corpora: round(replay_fraction * batch_size), leaving at least one
    row of the new domain; 0 with nothing to draw from."""
    if not available or config.replay_fraction == 0:
        return 0
    return min(config.batch_size - 1, round(config.replay_fraction * config.batch_size))


class StepLoss(nn.Module):
    """das_loss as a module: what DistributedDataParallel wraps on a rank, so that the whole step's forward runs
    through it and its hooks all-reduce every parameter's gradient during backward."""

    def __init__(self, model: nn.Module, units: ModelUnits, previous: UnitTensors | None, config: DASConfig) -> None:
        super().__init__()
        self.model, self.units, self.previous, self.config = model, units, previous, config

    def forward(self, input_ids: torch.Tensor, masked: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, shares: LossShares) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return das_loss(self.model, self.units, input_ids, masked, attention_mask, labels, self.previous,
                        self.config, shares)


def train_step(model: nn.Module, units: ModelUnits, tokenizer, optimizer: torch.optim.Optimizer,
               softmask: SoftMask | None, previous: UnitTensors | None, data: TrainingData,
               config: DASConfig, step: int, device: torch.device, ranks: Ranks = Ranks(),
               wrapped: nn.Module | None = None) -> tuple[dict[str, float], int]:
    """Step `step`: its lr, batch (with its replay rows), masks and dropout (each drawn from (seed, step)), the DAS
    loss, backward and the (soft-masked) optimizer step. Returns the loss parts and the batch's real tokens.

    On a rank of a distributed run, `wrapped` is the DistributedDataParallel StepLoss: the rank builds and masks the
    whole global batch, trains on its rows, and the loss parts it returns are the global batch's (summed shares)."""
    for group in optimizer.param_groups:
        group["lr"] = get_lr(config, step)
    input_ids, attention_mask = get_batch(data.packed, config, step, data.replay, data.replay_rows)
    masked, labels = mask_tokens(input_ids, attention_mask, tokenizer, config.mlm_probability,
                                 torch.Generator().manual_seed(step_seed(config.seed, step, 3)))
    torch.manual_seed(step_seed(config.seed, step, 4) + ranks.rank)  # dropout, each rank its own
    batch_tokens = int(attention_mask.sum())  # the global batch's, counted on the CPU copy: no device sync
    if not ranks.distributed:
        input_ids, masked, attention_mask, labels = _to((input_ids, masked, attention_mask, labels), device)
        loss, parts = das_loss(model, units, input_ids, masked, attention_mask, labels, previous, config)
        loss.backward()
    else:
        shares = LossShares(ranks, int((labels != -100).sum()))
        rows = _to(tuple(ranks.rows(t) for t in (input_ids, masked, attention_mask, labels)), device)
        loss, parts = wrapped(*rows, shares)
        (loss * ranks.world).backward()  # DDP averages the ranks' gradients; the shares sum to the global loss
        summed = torch.stack(list(parts.values()))
        ranks.all_reduce_sum([summed])
        parts = dict(zip(parts, summed, strict=True))
    optimizer_step(model, optimizer, softmask, config)
    return as_floats(parts), batch_tokens  # as_floats: the step's one device sync, so its time is true


@dataclass
class RunState:
    """What a run has done so far: kept in every checkpoint, restored on resume, reported in train_metrics.json."""

    timings: dict[str, float]
    start: int = 0
    history: list[dict] = field(default_factory=list)
    tokens: int = 0
    train_time: float = 0.0
    merge: dict | None = None  # the merge toward the parent (merge.merge_candidate's record), if any
    ranks: int = 1  # the processes it trained on (torch.distributed)

    def resume(self, step: int, state: dict) -> None:
        """Continue from a checkpoint's step and state."""
        self.start, self.history = step, state["history"]
        self.tokens, self.train_time = state["tokens"], state["train_time_s"]
        self.timings.update(state["timings"])

    def checkpoint_state(self, config: DASConfig, made_from: dict[str, str]) -> dict:
        return {"config": config.to_dict(), "made_from": made_from, "history": self.history, "tokens": self.tokens,
                "train_time_s": self.train_time, "timings": self.timings}

    def count(self, step: int, config: DASConfig, parts: dict[str, float], batch_tokens: int, seconds: float,
              report: Callable[[Progress], None]) -> None:
        """Add one step's time and tokens; log it (every log_every steps and the last) and report it."""
        self.train_time += seconds
        self.tokens += batch_tokens
        speed = self.tokens / max(self.train_time, 1e-9)
        eta = (config.steps - step - 1) * self.train_time / (step + 1)  # train_time spans resumed runs too
        if step % config.log_every == 0 or step == config.steps - 1:
            self.history.append({"step": step + 1, "lr": get_lr(config, step), "tokens_per_s": speed, **parts})
        report(Progress("train", step + 1, config.steps, parts, speed, eta))

    def metrics(self, domain: str, base: str | Path, config: DASConfig, data: TrainingData, units: ModelUnits,
                made_from: dict[str, str], device: torch.device, wall_time_s: float) -> dict:
        """train_metrics.json of a completed run."""
        packed = data.packed
        return {
            "domain": domain, "base_model": str(base), "status": "completed",
            "steps": config.steps, "tokens": self.tokens, "tokens_per_s": self.tokens / max(self.train_time, 1e-9),
            "train_time_s": self.train_time, "wall_time_s": wall_time_s,
            "resumed_from_step": self.start or None, "timings": self.timings,
            "corpus": {"documents": packed.num_documents, "blocks": len(packed), "tokens": packed.num_tokens},
            "history": self.history, "settings": config.to_dict(), "family": units.family,
            "made_from": made_from, "device": str(device), "ranks": self.ranks,
            "replay": {"rows_per_batch": data.replay_rows, "corpora": data.replay_documents},
            "merge": self.merge,
        }


def _domain_importance(model: nn.Module, units: ModelUnits, tokenizer, packed: PackedCorpus, config: DASConfig,
                       device: torch.device, run: RunState) -> UnitTensors:
    """I(t): what the trained model needs for its domain (the MLM-loss pass on the domain's own blocks)."""
    t0 = time.perf_counter()
    batches = sample_batches(packed, config.importance_samples, config.importance_batch_size,
                             step_seed(config.seed, config.steps, 5))
    raw = domain_importance_raw(model, units, _to(batches, device), tokenizer, config.mlm_probability,
                                step_seed(config.seed, config.steps, 6), precision=config.precision,
                                embeddings=config.protect_embeddings)
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
        if incoming is not None and not importance_in.equals(incoming):
            raise ValueError(f"{ckpt_dir} was trained against another importance than {prev_importance}; "
                             f"remove {ckpt_dir} to start over")
    elif incoming is not None:
        importance_in = incoming
    else:
        report(Progress("general-importance", 0, config.steps))
        t0 = time.perf_counter()
        batches = sample_batches(packed, config.importance_samples, config.importance_batch_size,
                                 step_seed(config.seed, 0, 2))
        raw = general_importance_raw(model, units, _to(batches, device), precision=config.precision,
                                     embeddings=config.protect_embeddings)
        importance_in = normalise(raw, config.negative_rule).to("cpu")
        run.timings["general_importance_s"] = time.perf_counter() - t0
    if importance_in is not None:
        importance_in.check_shapes(units)
    return importance_in


def _save_model(out_dir: Path, model: nn.Module, tokenizer, base: str | Path,
                importances: dict[str, UnitTensors | None]) -> None:
    """The Hugging Face folder (the parent's tokenizer files kept) and the importance files that exist."""
    model.save_pretrained(out_dir)
    keep_parent_tokenizer_files(tokenizer.save_pretrained(out_dir), base)
    for name, importance in importances.items():
        if importance is not None:
            importance.save(out_dir / name)


def keep_parent_tokenizer_files(written: tuple[str, ...], base: str | Path) -> None:
    """Training does not change the tokenizer: where the base folder holds a file that
    `save_pretrained` just rewrote (it adds load-time keys to tokenizer_config.json), put the
    base's bytes back. Versions of one lineage then share their tokenizer files byte for byte, and
    a hot swap between them reuses the tokenizer it is serving (serving.model.same_tokenizer_files)."""
    if not Path(base).is_dir():
        return  # a hub id: the files written are the first of the lineage
    for written_path in map(Path, written):
        parent = Path(base) / written_path.name
        if parent.is_file() and written_path.is_file():
            shutil.copyfile(parent, written_path)


def _incoming(path: str | Path, units: ModelUnits, config: DASConfig) -> UnitTensors:
    """The importance handed on by the previous version. With protect_embeddings and a file without
    word-embedding rows (its chain never protected them), the rows start at 0: nothing protected."""
    importance = UnitTensors.load(path)
    if config.uses_importance and config.protect_embeddings and importance.embeddings is None:
        importance = importance.with_embeddings(torch.zeros(units.embeddings_shape()))
    return importance


def _finished_run(out_dir: Path, config: DASConfig, made_from: dict[str, str]) -> AdaptResult | None:
    """The result of a run already completed in `out_dir` with the same settings and inputs, if any."""
    path = out_dir / METRICS
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    if metrics.get("settings") != config.to_dict():
        raise ValueError(f"{out_dir} already holds a run made with other settings; choose another --out")
    other = _other_inputs(metrics.get("made_from"), made_from)
    if other:
        raise ValueError(f"{out_dir} already holds a run made from {other}; remove {out_dir} or choose another --out")
    return AdaptResult("completed", out_dir, metrics["steps"], metrics)


def _check_checkpoints(ckpt_dir: Path, config: DASConfig, made_from: dict[str, str]) -> None:
    """Refuse a checkpoints folder left by a run with other settings, another corpus or another base.

    The fingerprints are checked in MADE_FROM, written with the importance the run trains against
    (before its first checkpoint: I(0) of the first domain comes from its corpus and base too);
    each checkpoint's state records them as well.
    """
    recorded = ckpt_dir / MADE_FROM
    if recorded.is_file():
        other = _other_inputs(json.loads(recorded.read_text()), made_from)
        if other:
            raise ValueError(f"{ckpt_dir} was started from {other}; remove {ckpt_dir} to start over")
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None and json.loads((latest / "state.json").read_text())["state"]["config"] != config.to_dict():
        raise ValueError(f"{latest} was written with other settings; remove {ckpt_dir} to start over")


def _other_inputs(recorded: dict[str, str] | None, now: dict[str, str]) -> str:
    """'' when the recorded fingerprints are today's; else which input differs (none recorded: both)."""
    recorded = recorded or {}
    names = {"corpus_sha256": "another corpus", "base_sha256": "another base model",
             "replay_sha256": "other replay corpora"}
    return " and ".join(label for key, label in names.items() if recorded.get(key) != now.get(key))


def _data_parallel(step_loss: StepLoss, device: torch.device) -> nn.Module:
    """The step's loss under DistributedDataParallel (gloo on the CPU, nccl on a GPU: the process group's)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(step_loss, device_ids=[device.index or 0] if device.type == "cuda" else None)


def _to(tensors, device: torch.device | str):
    """Move a (nested) tuple/list of tensors to `device`."""
    if isinstance(tensors, torch.Tensor):
        return tensors.to(device)
    return type(tensors)(_to(t, device) for t in tensors)
