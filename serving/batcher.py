"""Dynamic micro-batching: requests queue up (bounded); one thread runs them in batches.

A batch closes when it holds `max_batch_size` texts or `max_wait_s` has passed since its first
request; a request that would make it larger opens the next batch instead. Under load (the last
batch held several requests) a batch that finds the queue empty while it holds fewer requests than
the last waits up to `gather_s` for the rest of the burst; a lone client never waits. A request larger than
`max_batch_size` texts runs alone, in chunks of at most `max_batch_size` texts per forward pass.
Each batch uses one model reference, taken when it starts. A request's tokens and mask tokens are
counted after tokenisation and refused (InputError) over the limits it was submitted with.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from .encoded import Encoded
from .errors import InputError, NotReady, QueueFull
from .holder import ModelHolder, Servable

log = logging.getLogger(__name__)
# what a request asks for; each kind runs as a group of its own. "embed_unnormalised": the mean-pooled vector before
# its L2 normalisation (TEI's normalize: false); "tokenize": the tokenizer's view of each text, no forward pass
KINDS = ("fill_mask", "embed", "embed_unnormalised", "predict", "tokenize")


class Answer(Future):
    """A request's future; before it resolves, the batcher records per text whether it was cut to the model's
    maximum sequence (`truncated`) and the tokens the model read, all texts (`tokens`)."""

    def __init__(self) -> None:
        super().__init__()
        self.truncated: list[bool] = []
        self.tokens = 0


@dataclass
class _Request:
    kind: str  # one of KINDS
    texts: list[str]
    top_k: int
    tasks: tuple[str, ...] = ()  # predict: the end tasks to answer
    max_tokens: int | None = None  # all texts together, as the model sees them
    max_masks: int | None = None  # fill-mask: mask tokens, all texts together
    future: Answer = field(default_factory=Answer)
    encoded: Encoded | None = None  # tokenised once, by the check, for the forward pass too
    truncate: bool = True  # False: a text longer than the model's maximum sequence is refused, not cut
    model: Servable | None = None  # the version the request names (serving/pinned.py); None: the one serving
    special_tokens: bool = True  # tokenize: add the model's special tokens around each text


class MicroBatcher:
    def __init__(self, holder: ModelHolder, max_batch_size: int, max_wait_s: float, queue_size: int,
                 on_batch: Callable[[str, int], None] = lambda kind, size: None, gather_s: float = 0.0) -> None:
        self.holder, self.max_batch_size, self.max_wait_s = holder, max_batch_size, max_wait_s
        self.gather_s = gather_s  # how long a batch may wait for the rest of a loaded burst
        self.last_requests = 0  # requests in the last batch: the load signal
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

    def submit(self, kind: str, texts: list[str], top_k: int = 5, *, max_tokens: int | None = None,
               max_masks: int | None = None, tasks: tuple[str, ...] = (), truncate: bool = True,
               model: Servable | None = None, special_tokens: bool = True) -> Answer:
        """Queue a request; its future resolves to (version, answers) or raises InputError/NotReady.

        `max_tokens` and `max_masks` bound the request (InputError over them); None: no bound.
        A predict request's answers are {"results": per text {task: answer}, "task_models": {...}};
        its tasks are answered from the same backbone pass as every other predict request of the batch.
        `truncate`: a text longer than the model's maximum sequence is cut to it (False: an InputError naming
        the text); the future's `truncated` says which were.
        `model`: the loaded version that must answer (a request that names a version); None: the one serving
        when the batch runs. A batch runs each version's requests apart: it never mixes versions.
        `special_tokens` (tokenize): whether [CLS]/[SEP] (or the model's own) are added around each text.
        """
        if kind not in KINDS:  # a kind no group runs would leave its future waiting for ever
            raise ValueError(f"unknown request kind {kind!r}; one of {', '.join(KINDS)}")
        request = _Request(kind, texts, top_k, tasks, max_tokens, max_masks, truncate=truncate, model=model,
                           special_tokens=special_tokens)
        try:
            self.queue.put_nowait(request)
        except queue.Full:
            raise QueueFull("the inference queue is full") from None
        return request.future

    def _loop(self) -> None:
        held: _Request | None = None  # did not fit the last batch: it opens the next one
        while True:
            first = held if held is not None else self.queue.get()
            held = None
            if first is None:
                return
            batch, size = [first], len(first.texts)
            deadline = time.monotonic() + self.max_wait_s
            gather_until = time.monotonic() + self.gather_s  # under load only, see below
            while size < self.max_batch_size:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    # Under load (the last batch held several requests) the clients it answered are
                    # sending their next ones right now: wait a moment for them rather than run a
                    # batch of one or two and leave the rest for the next pass. A lone client never waits.
                    if len(batch) >= self.last_requests or time.monotonic() >= gather_until:
                        break
                    try:
                        item = self.queue.get(timeout=max(0.0, gather_until - time.monotonic()))
                    except queue.Empty:
                        break
                if item is None:
                    self.queue.put(None)
                    break
                if size + len(item.texts) > self.max_batch_size:  # never more than a batch from several requests
                    held = item
                    break
                batch.append(item)
                size += len(item.texts)
            self.last_requests = len(batch)
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
        with self.holder.turn():  # a swap builds the next version between batches, not beside one
            current = self.holder.current  # one reference for the requests that name no version
            for model, requests in _by_model(batch, current):  # never two versions in one forward pass
                self._run_on(model, requests)

    def _run_on(self, model: Servable | None, batch: list[_Request]) -> None:
        if model is None:
            for request in batch:
                request.future.set_exception(NotReady("no model version is loaded yet"))
            return
        for kind in KINDS:
            group = [r for r in batch if r.kind == kind]
            if group:
                self._run_group(model, kind, group)

    def _run_group(self, model: Servable, kind: str, group: list[_Request]) -> None:
        self._encode_together(model, group)
        valid = [r for r in group if self._checked(model, kind, r)]
        if not valid:
            return
        if kind == "tokenize":  # no forward pass: the tokenizer (which only this thread uses) answers each request
            for request in valid:
                try:
                    request.future.set_result((model.version, model.tokenize(request.texts, request.special_tokens)))
                except InputError as err:
                    request.future.set_exception(err)
            return
        texts, top_k = Encoded.join([r.encoded for r in valid]), max(r.top_k for r in valid)
        tasks = sorted({task for r in valid for task in r.tasks})
        outputs: list = []
        for start in range(0, len(texts), self.max_batch_size):  # one forward pass holds at most a batch
            chunk = texts[start:start + self.max_batch_size]
            self.on_batch(kind, len(chunk))
            try:
                outputs += self._answer(model, kind, chunk, top_k, tasks)
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
            elif kind == "predict":
                answers = {"results": [{t: _top_labels(per_text[t], request.top_k) for t in request.tasks}
                                       for per_text in answers],
                           "task_models": {t: model.tasks.tasks[t].describe(model.version) for t in request.tasks}}
            request.future.set_result((model.version, answers))

    @staticmethod
    def _encode_together(model: Servable, group: list[_Request]) -> None:
        """Tokenise every request of the group in one call (one call per request costs more than the
        work); if the tokenizer refuses any text, each request is tokenised alone by its check."""
        if len(group) < 2:
            return
        try:
            encoded = model.encode([text for request in group for text in request.texts])
        except InputError:
            return
        start = 0
        for request in group:
            request.encoded = encoded[start:start + len(request.texts)]
            start += len(request.texts)

    @staticmethod
    def _checked(model: Servable, kind: str, request: _Request) -> bool:
        """Each request is checked alone (its tokens and mask tokens; each fill-mask text needs a mask
        token); a bad one leaves the batch."""
        try:
            if request.encoded is None:
                request.encoded = model.encode(request.texts)
            if not request.truncate:
                _refuse_truncated(request.encoded)
            tokens, masks = request.encoded.tokens, request.encoded.count(model.mask_token_id)
            if request.max_tokens is not None and tokens > request.max_tokens:
                raise InputError(f"the request holds {tokens} tokens; the limit is {request.max_tokens} "
                                 "per request (DAS_MAX_REQUEST_TOKENS)")
            if kind == "fill_mask" and request.max_masks is not None and masks > request.max_masks:
                raise InputError(f"the request holds {masks} mask tokens; the limit is {request.max_masks} "
                                 "per request (DAS_MAX_MASKS_PER_REQUEST)")
            if kind == "fill_mask":
                model.check_fill_mask(request.texts, request.encoded)
            if kind == "predict":
                model.check_tasks(list(request.tasks))  # the version this batch runs on serves them
            request.future.truncated, request.future.tokens = request.encoded.truncated, tokens
            return True
        except InputError as err:
            request.future.set_exception(err)
            return False

    @staticmethod
    def _answer(model: Servable, kind: str, texts: Encoded, top_k: int, tasks: list[str]) -> list:
        if kind == "fill_mask":
            return model.fill_mask(texts, top_k)
        if kind == "predict":
            return model.predict(texts, tasks)
        return model.embed(texts) if kind == "embed" else model.embed(texts, normalize=False)


def _refuse_truncated(encoded: Encoded) -> None:
    """InputError for the first text longer than the model's maximum sequence (a cut text holds exactly that many
    ids), with what to do about it."""
    for i, (whole, ids) in enumerate(zip(encoded.lengths, encoded.ids, strict=True)):
        if whole > len(ids):
            raise InputError(f"text {i} has {whole} tokens; the model reads at most {len(ids)} (specials included): "
                             f"shorten it, or send truncate: true to have it cut to the first {len(ids)}")


def _by_model(batch: list[_Request], current: Servable | None) -> list[tuple[Servable | None, list[_Request]]]:
    """The batch's requests grouped by the model that answers them (its own, else `current`), in arrival order."""
    groups: dict[int, tuple[Servable | None, list[_Request]]] = {}
    for request in batch:
        model = request.model if request.model is not None else current
        groups.setdefault(id(model), (model, []))[1].append(request)
    return list(groups.values())


def _top_labels(answer: dict, top_k: int) -> dict:
    """A task's answer with only its `top_k` best-scored labels (0: all); the answered label is the best: it stays."""
    if not top_k or len(answer["scores"]) <= top_k:
        return answer
    # the scores are rounded, so another label may tie the answered one: the answered label goes first among equals
    best = sorted(answer["scores"].items(), key=lambda item: (-item[1], item[0] != answer["label"]))[:top_k]
    return {**answer, "scores": dict(best)}
