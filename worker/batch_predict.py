"""The `predict` kind of job: a stored JSONL file answered line by line, into a stored JSONL file.

The job answers with the version active when it first starts (`job.parent`, recorded as `job.version` too), in
batches of BATCH_LINES, reporting progress (step = lines answered, total = lines) and honouring a cancel after
every batch. Each output line is `{"id": ..., "result": ..., "truncated": ...}` with the per-text answer of
POST /v1/predict, /v1/embeddings or /v1/fill-mask (computed by the same das_engine functions the service uses), in the
input's order, and whether the text was cut to the model's maximum sequence. As on those routes, a text longer than
that is cut only when the job says `truncate` (the upload's form field, or DAS_AUTO_TRUNCATE then); otherwise its line
gets `{"id": ..., "error": ...}` saying so, and the other lines are answered. A line the model cannot answer (a mask
token cut off by truncation) gets an error too.

Resumable on one machine and idempotent anywhere: the answers are appended to a file in the work folder, and an
attempt after a shutdown goes on after its last complete line; the finished file is stored as a blob
(content-addressed) and its digest recorded on the job, so a copy redelivered after that finishes at once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from das_engine.answers import fill_mask_candidates, pooled
from das_engine.batch_input import BatchLine, read_batch_input
from das_engine.endtask import served_max_tokens
from das_engine.loading import load_masked_lm
from das_engine.served_tasks import load_task_model, predict
from das_engine.units import resolve_units
from job_records import Job
from model_store.served_tasks import TaskSet, load_task_set
from model_store.store import ModelStore
from model_store.tasks import TaskStore

from .context import JobStopped, WorkerContext
from .progress import ProgressReporter

log = logging.getLogger(__name__)
BATCH_LINES = 32  # lines per forward pass, and between two looks at the cancel flag
OUTPUTS = "batch-predictions"  # under the work folder: the answers of a running job, one file per job
UNBOUNDED = 10**9  # the stored input was checked at upload, against the limits of that time


class TasksNotServed(ValueError):
    """A task the job names has no model on the version it answers with (the job is rejected, saying which)."""


@dataclass
class Answerer:
    """A version loaded to answer texts as the service does: the backbone, its MLM head and its task models."""

    version: str
    model: Any
    tokenizer: Any
    mlm_head: torch.nn.Module
    max_tokens: int
    device: torch.device
    tasks: TaskSet
    decoded: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, store: ModelStore, version: str, device: str = "cpu") -> Answerer:
        model, tokenizer = load_masked_lm(store.model_dir(version))
        model.eval().to(device)
        tasks = load_task_set(TaskStore(store), version, None, load_task_model) or TaskSet()
        return cls(version, model, tokenizer, resolve_units(model).mlm_head, served_max_tokens(model.config),
                   torch.device(device), tasks)

    def check_tasks(self, names: list[str]) -> None:
        missing = {name: self.tasks.problem(name) or "not registered" for name in names if name not in self.tasks.tasks}
        if missing:
            said = "; ".join(f"{name!r}: {'no model yet' if why == 'pending' else why}"
                             for name, why in missing.items())
            raise TasksNotServed(f"task(s) without a model on {self.version}: {said}; fit them (or leave them out) "
                                 "and upload the file again")

    def answer(self, job: Job, texts: list[str]) -> list[dict[str, Any]]:
        """One answer per text, {"result": ..., "truncated": ...} or {"error": ...}, in the order of `texts`. A text
        over the model's maximum sequence is cut when the job says `truncate` (a record from before that field: yes,
        as every text was then), else it gets an error and the others are answered without it."""
        rows, lengths = self._encoded(texts)
        cut = job.truncate is not False
        refused = {i: {"error": f"text has {whole} tokens; the model reads at most {self.max_tokens} (specials "
                                "included): shorten it, or upload with truncate=true to have it cut"}
                   for i, whole in enumerate(lengths) if whole > self.max_tokens and not cut}
        kept = [i for i in range(len(texts)) if i not in refused]
        answers = dict(zip(kept, self._answer_rows(job, [rows[i] for i in kept]) if kept else [], strict=True))
        for i, answer in answers.items():
            if "result" in answer:
                answer["truncated"] = lengths[i] > len(rows[i])
        return [refused.get(i) or answers[i] for i in range(len(texts))]

    def _encoded(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """(token ids per text as the model reads them: specials in, cut to max_tokens; each text's whole length:
        the tokenizer's own count, specials in). A text over max_tokens is tokenised again with the tokenizer's
        truncation, so the cut is the tokenizer's (specials kept), as the service cuts it."""
        whole = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        long = [i for i, ids in enumerate(whole) if len(ids) > self.max_tokens]
        rows = list(whole)
        if long:
            cut = self.tokenizer([texts[i] for i in long], truncation=True, max_length=self.max_tokens)["input_ids"]
            for i, ids in zip(long, cut, strict=True):
                rows[i] = ids
        return rows, [len(ids) for ids in whole]

    @torch.inference_mode()
    def _answer_rows(self, job: Job, rows: list[list[int]]) -> list[dict[str, Any]]:
        """One answer per row of token ids, {"result": ...} or {"error": ...}, in order."""
        input_ids, attention_mask = self._padded(rows)
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if job.answer_kind == "embed":
            return [{"result": vector} for vector in pooled(hidden, attention_mask).tolist()]
        if job.answer_kind == "fill_mask":
            return self._fill_mask(hidden, input_ids, rows, job.top_k or 5)
        features = pooled(hidden, attention_mask)
        return [{"result": per_text} for per_text in predict(self.tasks, list(job.tasks or []), features, input_ids,
                                                             attention_mask)]

    def _fill_mask(self, hidden: torch.Tensor, input_ids: torch.Tensor, rows: list[list[int]],
                   top_k: int) -> list[dict[str, Any]]:
        candidates = fill_mask_candidates(hidden, input_ids, self.tokenizer.mask_token_id, self.mlm_head, top_k,
                                          self._token_text)
        return [{"result": found} if self.tokenizer.mask_token_id in ids else
                {"error": f"the mask token lies beyond the first {self.max_tokens} tokens"}
                for ids, found in zip(rows, candidates, strict=True)]

    def _padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), (B, T) each, padded on the right as the service pads them."""
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _token_text(self, token_id: int) -> str:
        if token_id not in self.decoded:
            self.decoded[token_id] = self.tokenizer.decode([token_id]).strip()
        return self.decoded[token_id]


def run_predict_job(job: Job, ctx: WorkerContext, reporter: ProgressReporter) -> str:
    """Answer every line of `job.input_sha256` with version `job.parent`; returns that version."""
    if job.output_sha256 and ctx.store.has_corpus(job.output_sha256):
        return job.parent  # finished before its worker could say so: nothing to do again
    ctx.jobs.update(job.id, version=job.parent)  # the version that answers, for the client to see from the start
    lines = read_batch_input(ctx.store.corpus_path(job.input_sha256).read_bytes(), max_lines=UNBOUNDED,
                             max_chars=UNBOUNDED)
    answerer = Answerer.load(ctx.store, job.parent, ctx.device)
    if job.answer_kind == "predict":
        answerer.check_tasks(list(job.tasks or []))
    partial = Path(ctx.work_dir) / OUTPUTS / f"{job.id}.jsonl"
    done = _resume(partial)
    started, first = time.monotonic(), done
    with open(partial, "a", encoding="utf-8") as out:
        while done < len(lines):
            if reporter.should_stop():
                out.close()
                if reporter.cancelled:
                    partial.unlink(missing_ok=True)
                raise JobStopped(f"stopped after {done} of {len(lines)} lines")
            batch = lines[done:done + BATCH_LINES]
            out.writelines(_output_line(line, answer)
                           for line, answer in zip(batch, answerer.answer(job, [line.text for line in batch]),
                                                   strict=True))
            out.flush()
            done += len(batch)
            _report(ctx, job, done, len(lines), (done - first) / max(time.monotonic() - started, 1e-9))
    sha = ctx.store.put_blob(partial)
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


def _report(ctx: WorkerContext, job: Job, done: int, total: int, lines_per_s: float) -> None:
    eta = (total - done) / lines_per_s if lines_per_s > 0 else None
    ctx.jobs.update(job.id, progress={"phase": "predict", "step": done, "total": total, "losses": {},
                                      "eta_s": None if eta is None else round(eta, 1)})
