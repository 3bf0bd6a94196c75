"""Dynamic micro-batching: requests queue up (bounded); one thread runs them in batches.

A batch closes when it holds `max_batch_size` texts or `max_wait_s` has passed since its first
request. Each batch uses one model reference, taken when it starts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from .errors import InputError, NotReady, QueueFull
from .holder import ModelHolder, Servable

log = logging.getLogger(__name__)


@dataclass
class _Request:
    kind: str  # "fill_mask" | "embed"
    texts: list[str]
    top_k: int
    future: Future = field(default_factory=Future)


class MicroBatcher:
    def __init__(self, holder: ModelHolder, max_batch_size: int, max_wait_s: float, queue_size: int,
                 on_batch: Callable[[str, int], None] = lambda kind, size: None) -> None:
        self.holder, self.max_batch_size, self.max_wait_s = holder, max_batch_size, max_wait_s
        self.queue: queue.Queue[_Request | None] = queue.Queue(maxsize=queue_size)
        self.on_batch = on_batch
        self.thread = threading.Thread(target=self._loop, name="das-batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(10)

    def depth(self) -> int:
        return self.queue.qsize()

    def submit(self, kind: str, texts: list[str], top_k: int = 5) -> Future:
        """Queue a request; its future resolves to (version, answers) or raises InputError/NotReady."""
        request = _Request(kind, texts, top_k)
        try:
            self.queue.put_nowait(request)
        except queue.Full:
            raise QueueFull("the inference queue is full") from None
        return request.future

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch, size = [first], len(first.texts)
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch_size:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
                size += len(item.texts)
            try:
                self._run(batch)
            except Exception as err:  # noqa: BLE001 - whatever one batch does, the loop goes on
                log.exception("an inference batch failed")
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(err)

    def alive(self) -> bool:
        """The loop runs (readiness depends on it)."""
        return self.thread.is_alive()

    def _run(self, batch: list[_Request]) -> None:
        model = self.holder.current  # one version for the whole batch
        if model is None:
            for request in batch:
                request.future.set_exception(NotReady("no model version is loaded yet"))
            return
        for kind in ("fill_mask", "embed"):
            group = [r for r in batch if r.kind == kind]
            if group:
                self._run_group(model, kind, group)

    def _run_group(self, model: Servable, kind: str, group: list[_Request]) -> None:
        valid = [r for r in group if self._checked(model, kind, r)]
        if not valid:
            return
        texts = [t for r in valid for t in r.texts]
        self.on_batch(kind, len(texts))
        try:
            outputs = self._answer(model, kind, texts, max(r.top_k for r in valid))
        except Exception as err:  # noqa: BLE001 - one request's text must not fail the others: run each alone
            if len(valid) == 1:
                valid[0].future.set_exception(err)
                return
            for request in valid:
                self._run_group(model, kind, [request])
            return
        start = 0
        for request in valid:
            answers = outputs[start:start + len(request.texts)]
            start += len(request.texts)
            if kind == "fill_mask":
                answers = [[candidates[: request.top_k] for candidates in per_text] for per_text in answers]
            request.future.set_result((model.version, answers))

    @staticmethod
    def _checked(model: Servable, kind: str, request: _Request) -> bool:
        """Fill-mask texts are checked alone (each needs a mask token); a bad one leaves the batch."""
        try:
            if kind == "fill_mask":
                for text in request.texts:
                    model.check_fill_mask(text)
            return True
        except InputError as err:
            request.future.set_exception(err)
            return False

    @staticmethod
    def _answer(model: Servable, kind: str, texts: list[str], top_k: int) -> list:
        return model.fill_mask(texts, top_k) if kind == "fill_mask" else model.embed(texts)
