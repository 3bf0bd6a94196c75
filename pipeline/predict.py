"""Texts answered as the service answers them, by a version loaded once (`Answerer`): embeddings, fill-mask and the
registered tasks' predictions, computed by the same das_engine functions as POST /v1/embeddings, /v1/fill-mask and
/v1/predict, so a line of a batch gets exactly the answer those routes give the same text on the same version.

A text longer than the model's maximum sequence is cut only when the ask says `truncate`; otherwise its answer is an
error saying so, and the other texts are answered. A text the model cannot answer (a mask token cut off by
truncation) gets an error too. The `predict` job (worker.job_kinds.run_predict_job) runs a stored file through it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from das_engine.answers import fill_mask_candidates, mlm_top_tokens, pooled
from das_engine.endtask import served_max_tokens
from das_engine.loading import load_lm
from das_engine.served_tasks import load_task_model, predict
from das_engine.units import resolve_units
from model_store.served_tasks import TaskSet, load_task_set
from model_store.store import ModelStore
from model_store.tasks import TaskStore

log = logging.getLogger(__name__)


class TasksNotServed(ValueError):
    """A task the ask names has no model on the version it answers with (the job is rejected, saying which)."""


@dataclass(frozen=True)
class Ask:
    """What every text of a batch is asked: its answer kind, with the tasks (predict), top_k (fill_mask), and whether
    a text over the model's maximum sequence is cut (else it gets an error)."""

    kind: Literal["embed", "fill_mask", "predict"]
    tasks: tuple[str, ...] = ()
    top_k: int = 5
    truncate: bool = True


@dataclass
class Answerer:
    """A version loaded to answer texts as the service does: the backbone, its MLM head (a masked LM's; None for a
    causal LM, which answers embeddings and tasks from its base model's last hidden states) and its task models."""

    version: str
    model: Any
    tokenizer: Any
    mlm_head: torch.nn.Module | None
    max_tokens: int
    device: torch.device
    tasks: TaskSet
    decoded: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, store: ModelStore, version: str, device: str = "cpu") -> Answerer:
        model, tokenizer, kind = load_lm(store.model_dir(version))
        model.eval().to(device)
        tasks = load_task_set(TaskStore(store), version, None, load_task_model) or TaskSet()
        head = resolve_units(model).mlm_head if kind == "masked" else None
        return cls(version, model, tokenizer, head, served_max_tokens(model.config), torch.device(device), tasks)

    def check_tasks(self, names: list[str]) -> None:
        missing = {name: self.tasks.problem(name) or "not registered" for name in names if name not in self.tasks.tasks}
        if missing:
            said = "; ".join(f"{name!r}: {'no model yet' if why == 'pending' else why}"
                             for name, why in missing.items())
            raise TasksNotServed(f"task(s) without a model on {self.version}: {said}; fit them (or leave them out) "
                                 "and upload the file again")

    def answer(self, ask: Ask, texts: list[str]) -> list[dict[str, Any]]:
        """One answer per text, {"result": ..., "truncated": ...} or {"error": ...}, in the order of `texts`. A text
        over the model's maximum sequence is cut when the ask says `truncate`, else it gets an error and the others
        are answered without it. Fill-mask on a causal LM is a ValueError (the job is rejected, saying why)."""
        if ask.kind == "fill_mask" and self.mlm_head is None:
            raise ValueError(f"{self.version} is a causal language model ({self.model.config.model_type}): it has no "
                             "mask token to fill; ask for kind embed or predict")
        rows, lengths = self._encoded(texts)
        cut = ask.truncate
        refused = {i: {"error": f"text has {whole} tokens; the model reads at most {self.max_tokens} (specials "
                                "included): shorten it, or upload with truncate=true to have it cut"}
                   for i, whole in enumerate(lengths) if whole > self.max_tokens and not cut}
        kept = [i for i in range(len(texts)) if i not in refused]
        answers = dict(zip(kept, self._answer_rows(ask, [rows[i] for i in kept]) if kept else [], strict=True))
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
    def _answer_rows(self, ask: Ask, rows: list[list[int]]) -> list[dict[str, Any]]:
        """One answer per row of token ids, {"result": ...} or {"error": ...}, in order."""
        input_ids, attention_mask = self._padded(rows)
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if ask.kind == "embed":
            return [{"result": vector} for vector in pooled(hidden, attention_mask).tolist()]
        if ask.kind == "fill_mask":
            return self._fill_mask(hidden, input_ids, rows, ask.top_k)
        features = pooled(hidden, attention_mask)
        return [{"result": per_text} for per_text in predict(self.tasks.tasks, list(ask.tasks), features, input_ids,
                                                             attention_mask)]

    def _fill_mask(self, hidden: torch.Tensor, input_ids: torch.Tensor, rows: list[list[int]],
                   top_k: int) -> list[dict[str, Any]]:
        candidates = fill_mask_candidates(hidden, input_ids, self.tokenizer.mask_token_id,
                                          mlm_top_tokens(self.mlm_head), top_k, self._token_text)
        return [{"result": found} if self.tokenizer.mask_token_id in ids else
                {"error": f"the mask token lies beyond the first {self.max_tokens} tokens"}
                for ids, found in zip(rows, candidates, strict=True)]

    def _padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), (B, T) each, padded on the right as the service pads them."""
        width = max(len(ids) for ids in rows)
        tok = self.tokenizer  # a GPT-2 has no pad token: any id does, the attention mask hides it (as serving pads)
        pad = next((i for i in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) if i is not None), 0)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _token_text(self, token_id: int) -> str:
        if token_id not in self.decoded:
            self.decoded[token_id] = self.tokenizer.decode([token_id]).strip()
        return self.decoded[token_id]
