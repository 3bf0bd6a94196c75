"""What each kind of job does (JOB_KINDS): its record read into the pipeline's values, the pipeline's workflow run,
and the record updated. `worker.jobs.run_job` picks the kind, holds the lease and ends the job.

- `adapt`: `pipeline.adaptation.adapt_version` on the stored corpus and the parent the record holds; then a fit job
  for every task the new active version lacks.
- `fit`: `pipeline.endtasks.fit_task_model` of one task's registration on the version the job started on.
- `predict`: a stored JSONL file answered line by line (`pipeline.predict.Answerer`) into a stored JSONL file, in
  batches of BATCH_LINES, reporting progress and honouring a cancel after every batch. Resumable on one machine and
  idempotent anywhere: the answers are appended to a file in the work folder, an attempt after a shutdown goes on
  after its last complete line, and the finished file is stored as a blob whose digest the record keeps, so a copy
  redelivered after that finishes at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from das_engine.run_state import Progress
from das_formats.batch_input import BatchLine, read_batch_input
from das_formats.corpus import read_corpus
from job_records import Job
from model_store.manifest import CorpusInfo
from model_store.tasks import TaskNotFound, TaskStore
from pipeline.adaptation import adapt_version, job_config
from pipeline.endtasks import fit_task_model
from pipeline.outcomes import JobStopped, Superseded, Yielded
from pipeline.predict import Answerer, Ask

from .context import WorkerContext
from .progress import ProgressReporter
from .retention import partial_answers
from .task_registry import queue_missing_fits

BATCH_LINES = 32  # lines per forward pass, and between two looks at the cancel flag
UNBOUNDED = 10**9  # the stored input was checked at upload, against the limits of that time


def run_adapt_job(job: Job, ctx: WorkerContext, reporter: ProgressReporter) -> str:
    """The `adapt` kind of job: its corpus, settings and parent come from its record (run_job sets the parent)."""
    config, force = job_config(job.settings)
    path = ctx.store.blobs.path(job.corpus_id)
    corpus = CorpusInfo(sha256=job.corpus_id, size=path.stat().st_size, documents=job.corpus_documents,
                        filename=job.corpus_filename)
    manifest = adapt_version(ctx.store, job.parent, corpus, job.domain, config, work_dir=ctx.work_dir,
                             documents=read_corpus(path), device=ctx.device, gate_max_drop=ctx.gate_max_drop,
                             force=force, on_progress=reporter, should_stop=reporter.should_stop, request_id=job.id,
                             train_procs=ctx.train_procs)
    if manifest.status == "active":
        # finetune tasks, and any a gate missed; asked for by the request that asked for this job
        queue_missing_fits(ctx.store, ctx.jobs, manifest.id, ctx.submit, job.request_id)
    else:
        active = ctx.store.active_id()
        ctx.jobs.update(job.id, note=f"published as a candidate: {active} became active while this job ran from "
                                     f"{job.parent}; activate {manifest.id} to serve it")
    return manifest.id


def run_fit_job(job: Job, ctx: WorkerContext, reporter: ProgressReporter) -> str:
    """The `fit` kind of job: fit task `job.task` on version `job.parent` (fixed when it started).

    It stops at its next step when cancelled (or at a shutdown: JobStopped), and ends `cancelled` as Superseded
    when the task was deleted or registered again meanwhile (the new registration has its own job)."""
    try:
        definition = TaskStore(ctx.store).definition(job.task)
    except TaskNotFound:
        raise Superseded(f"task {job.task!r} was deleted while this job waited") from None
    if definition.generation != job.generation:
        raise Superseded(f"task {definition.name!r} was registered again while this job waited; "
                         "its new registration has its own job")
    if reporter.should_stop():
        raise JobStopped("stopped before the fit began")

    def report(progress: Progress) -> None:
        reporter(progress)
        if progress.phase == "fit" and progress.step < progress.total and reporter.should_stop():
            raise JobStopped(f"stopped at {progress.phase} {progress.step} of {progress.total}")

    fit_task_model(ctx.store, definition, job.parent, device=ctx.device, report=report)
    return job.parent


def run_predict_job(job: Job, ctx: WorkerContext, reporter: ProgressReporter) -> str:
    """Answer every line of `job.input_sha256` with version `job.parent`; returns that version."""
    if job.output_sha256 and ctx.store.blobs.has(job.output_sha256):
        return job.parent  # finished before its worker could say so: nothing to do again
    ctx.jobs.update(job.id, version=job.parent)  # the version that answers, for the client to see from the start
    lines = read_batch_input(ctx.store.blobs.path(job.input_sha256).read_bytes(), max_lines=UNBOUNDED,
                             max_chars=UNBOUNDED)
    answerer = Answerer.load(ctx.store, job.parent, ctx.device)
    ask = Ask(job.answer_kind, tuple(job.tasks or ()), job.top_k or 5,
              truncate=job.truncate is not False)  # a record from before `truncate`: yes, as every text was then
    if ask.kind == "predict":
        answerer.check_tasks(list(ask.tasks))
    partial = partial_answers(ctx.work_dir, job.id)
    done = _resume(partial)
    started, first = time.monotonic(), done
    with open(partial, "a", encoding="utf-8") as out:
        while done < len(lines):
            if reporter.should_stop():  # a cancel's job ends in end_job, which removes the partial answers
                raise JobStopped(f"stopped after {done} of {len(lines)} lines")
            waiting = ctx.jobs.earliest_pending() if done > first else None  # (one chunk at least per turn)
            if waiting is not None and waiting.kind != "predict":
                raise Yielded(f"after {done} of {len(lines)} lines, to {waiting.kind} job {waiting.id}")
            batch = lines[done:done + BATCH_LINES]
            out.writelines(_output_line(line, answer)
                           for line, answer in zip(batch, answerer.answer(ask, [line.text for line in batch]),
                                                   strict=True))
            out.flush()
            done += len(batch)
            _report(reporter, done, len(lines), (done - first) / max(time.monotonic() - started, 1e-9))
    sha = ctx.store.blobs.put(partial)
    ctx.jobs.update(job.id, output_sha256=sha)
    partial.unlink(missing_ok=True)
    return job.parent


def _resume(partial: Path) -> int:
    """Lines already answered by an earlier attempt on this machine (a half-written last line is dropped)."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    if not partial.is_file():
        return 0
    data = partial.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        partial.write_bytes(complete)
    return complete.count(b"\n")


def _output_line(line: BatchLine, answer: dict[str, Any]) -> str:
    return json.dumps({"id": line.id, **answer}, ensure_ascii=False, separators=(",", ":")) + "\n"


def _report(reporter: ProgressReporter, done: int, total: int, lines_per_s: float) -> None:
    eta = (total - done) / lines_per_s if lines_per_s > 0 else None
    reporter(Progress("predict", done, total, eta_s=eta))


# kind -> the work itself: returns the version it published (fitted on, answered with), or raises JobStopped
JOB_KINDS: dict[str, Callable[[Job, WorkerContext, ProgressReporter], str]] = {"adapt": run_adapt_job,
                                                                              "fit": run_fit_job,
                                                                              "predict": run_predict_job}
