"""Adapt a version of the store to a corpus of the store, and publish the result as a new version.

The one path from a request to a version (`adapt_version`), taken by a job (`worker.job_kinds.run_adapt_job`:
the corpus and the parent its record holds), by `das adapt --store` (`adapt_active`: a corpus file and the active
version) and by `das eval --served`. Nothing here knows HTTP or job records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from das_engine.run_state import Progress
from das_engine.spawn_ranks import adapt_on_ranks
from das_formats.config import DASConfig
from das_formats.corpus import read_corpus
from model_store.manifest import CorpusInfo, Manifest
from model_store.store import LineageError, ModelStore, PublishRequest, StoreError

from .endtasks import CandidateJudge, ensure_probe_models, gate_candidate, publish_probes
from .outcomes import GateRejected, JobStopped

log = logging.getLogger(__name__)


JOB_OPTIONS = ("force",)  # job settings that are not DASConfig fields
# the phases an adaptation reports, in order: the trainer's (das_engine.run_state.Progress: the importance passes
# run only where the settings use importance, merge only with a merge), then the gate's and the store's
PHASES = ("prepare", "general-importance", "train", "domain-importance", "merge", "saving", "gate", "publish",
          "activate")


def job_config(settings: dict) -> tuple[DASConfig, bool]:
    """A job's training settings and its `force` (skip the gate's veto)."""
    config = DASConfig.from_dict({k: v for k, v in settings.items() if k not in JOB_OPTIONS})
    return config, bool(settings.get("force", False))


def training_summary(metrics: dict) -> dict:
    """train_metrics.json without the per-step history (that stays in the version's file)."""
    return {k: v for k, v in metrics.items() if k != "history"} | {"final": metrics["history"][-1]}


def adapt_version(store: ModelStore, parent: str, corpus: CorpusInfo, domain: str, config: DASConfig, *,
                  work_dir: Path, documents: list[str] | None = None, device: str = "cpu", activate: bool = True,
                  gate_max_drop: float = 1.0, force: bool = False,
                  on_progress: Callable[[Progress], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, request_id: str | None = None,
                  train_procs: int = 1) -> Manifest:
    """Adapt version `parent` on a stored corpus and publish the result; raise JobStopped if stopped.

    Replay and merge_auto read the corpora of the parent's lineage (`lineage_corpora`); merge_auto's choice judges
    each share against the registered tasks' references (pipeline.endtasks.CandidateJudge). Before the candidate is
    activated, every end task is fitted on it and the forgetting gate scores it against each task's best on the
    lineage (pipeline.endtasks): a rejected candidate is published with status
    `rejected` and GateRejected is raised. The candidate, then its task models, are published, and
    only then is it activated, so a swap moves both together. If another version became active
    meanwhile, the result stays a candidate. The working folder is named by parent, corpus digest
    and settings, so running the same request again resumes from its checkpoint.
    """
    clock = _Phases()
    report = on_progress or (lambda progress: None)
    report(Progress("prepare", 0, 1))
    if documents is None:
        documents = read_corpus(store.blobs.path(corpus.sha256))
    opened = store.open_version(parent)  # checked once here; the trainer and the gate's references reuse it
    settings_digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    work = Path(work_dir) / f"{parent}-{corpus.sha256[:16]}-{settings_digest[:12]}"
    replay = lineage_corpora(store, parent) if config.replay_fraction > 0 or config.merge_auto else None
    clock.lap("prepare")  # the corpus read, the parent opened and checked, the lineage's corpora read
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as judging:
        judge = CandidateJudge(store, opened, Path(judging), max_drop=gate_max_drop, device=device) \
            if config.merge_auto else None
        result = adapt_on_ranks(train_procs, opened.folder, documents, work, config,
                                prev_importance=store.importance_file(parent), domain=domain, device=device,
                                replay=replay, judge_tasks=judge, on_progress=_until_trained(report),
                                should_stop=should_stop,
                                base_digests=opened.manifest.files, token_cache=Path(work_dir) / TOKEN_CACHE)
    if result.status != "completed":
        raise JobStopped(f"stopped at step {result.step}")
    clock.lap("train")  # importance, training, the domain importance, a merge
    with tempfile.TemporaryDirectory(dir=work_dir) as fits:
        gate = gate_candidate(store, work, opened, Path(fits), max_drop=gate_max_drop, device=device, force=force,
                              report=report)
        clock.lap("gate")  # every probe task fitted on the candidate, each gated task scored
        request = PublishRequest(folder=work, parent=parent, domain=domain, corpus=corpus,
                                 base_model=opened.manifest.base_model, settings=config.to_dict(),
                                 metrics=training_summary(result.metrics) | {"phases_s": clock.seconds},
                                 request_id=request_id,
                                 status="rejected" if gate.rejected else "candidate", evaluation=gate.evaluation)
        report(Progress("publish", 0, 1))
        manifest = _publish(store, request, config.steps)
        publish_probes(store, manifest.id, gate.probes)
    clock.lap("publish")
    log.info("upload to %s: %s", manifest.id, ", ".join(f"{k} {v:.1f} s" for k, v in clock.seconds.items()),
             extra={"event": "upload_phases", "version": manifest.id, "job_id": request_id, "phases_s": clock.seconds})
    shutil.rmtree(work, ignore_errors=True)
    if gate.rejected:
        raise GateRejected(manifest.id, gate.reason)
    report(Progress("activate", 0, 1))
    return finish_publication(store, manifest, activate)


def _publish(store: ModelStore, request: PublishRequest, steps: int) -> Manifest:
    """The candidate (or the rejected version) into the store, not active yet; logged."""
    manifest = store.publish(request, activate=False)
    log.info("published %s from %s (domain %s, %d steps) as %s", manifest.id, request.parent, request.domain, steps,
             manifest.status, extra={"event": "publish", "version": manifest.id, "parent": request.parent,
                                     "domain": request.domain, "status": manifest.status,
                                     "job_id": request.request_id})
    return manifest


def _until_trained(report: Callable[[Progress], None]) -> Callable[[Progress], None]:
    """The trainer's progress, but not its `done`: the job goes on (the gate, the store), and says so itself."""
    return lambda progress: None if progress.phase == "done" else report(progress)


class _Phases:
    """Seconds of each phase of an upload, in order: what it spends besides training. The new version's
    `metrics.phases_s` holds prepare, train and gate (the manifest is written next); the log line `upload_phases`
    adds publish (the version and its probe models)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


TOKEN_CACHE = "token-cache"  # under the work folder: the lineage's corpora as token ids (das_engine.token_cache)


def lineage_corpora(store: ModelStore, version: str) -> dict[str, list[str]]:
    """The documents of every corpus the lineage of `version` learned (itself and its ancestors; each corpus once),
    by "DOMAIN (VERSION)": what replay draws from and merge_auto checks for forgetting. Only the lineage's own:
    a sibling branch's corpus is never drawn. A corpus the store no longer holds is left out."""
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    for manifest in store.lineage(version):
        if manifest.corpus is None or manifest.corpus.sha256 in seen or not store.blobs.has(manifest.corpus.sha256):
            continue
        seen.add(manifest.corpus.sha256)
        found[f"{manifest.domain} ({manifest.id})"] = read_corpus(store.blobs.path(manifest.corpus.sha256))
    return found


def finish_publication(store: ModelStore, manifest: Manifest, activate: bool, device: str = "cpu") -> Manifest:
    """Fit the probe tasks a published candidate lacks (after a crash), then activate it if its parent
    is still the active version; otherwise it stays a candidate and the operator's choice stays."""
    ensure_probe_models(store, manifest.id, device=device)
    if not activate or manifest.status == "rejected":
        return store.manifest(manifest.id)
    try:
        activated = store.activate(manifest.id, expected_active=manifest.parent)
        log.info("activated %s", manifest.id, extra={"event": "activate", "version": manifest.id,
                                                     "parent": manifest.parent})
        return activated
    except LineageError as err:
        log.warning("published %s as a candidate: %s", manifest.id, err)
        return store.manifest(manifest.id)


def adapt_active(store: ModelStore, corpus_file: Path, domain: str, config: DASConfig, *, work_dir: Path,
                 device: str = "cpu", activate: bool = True, gate_max_drop: float = 1.0, force: bool = False,
                 on_progress: Callable[[Progress], None] | None = None,
                 documents: list[str] | None = None) -> Manifest:
    """Put a corpus file into the store and adapt the active version on it (the CLI's path). `documents`: the file's,
    when the caller has read them already (pipeline.corpus_intake.check_corpus)."""
    if documents is None:
        documents = read_corpus(corpus_file)
    corpus = store.blobs.put_corpus(corpus_file, len(documents), filename=Path(corpus_file).name)
    parent = store.active_id()
    if parent is None:
        raise StoreError(f"{store.backend.location} has no active version; activate one with `das activate`")
    return adapt_version(store, parent, corpus, domain, config, work_dir=work_dir, documents=documents,
                         device=device, activate=activate, gate_max_drop=gate_max_drop, force=force,
                         on_progress=on_progress)
