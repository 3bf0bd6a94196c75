"""Generation from causal LM versions: one scheduler thread decodes every running sequence, a batch per version
(continuous batching: a request joins the running batch between two decode steps, a finished sequence leaves it).

A request is one or more prompts (token ids, checked by the caller) on one loaded version, taken when the request
arrived: a swap never moves a running sequence, so every sequence finishes on the version it started on, and the old
version's memory is freed once its last sequence ends. At most `max_concurrent` sequences decode at once; requests
beyond them wait in a bounded queue (QueueFull beyond it). The torch side is the version's decoder
(serving/decoding.py): `prefill` one prompt alone, `step` a batch of rows, `Rows.join` and `Rows.keep`. Each
iteration runs in the holder's turn, as the micro-batcher's batches do, so a swap builds a version between steps.

What a request hears, from the scheduler's thread, through its `sink`: `Delta` (a piece of one sequence's text, never
a part of a possible stop string nor half a character), `Finished` (one per sequence), or `Failed` (the pass failed;
the request's other sequences end with it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

from .errors import QueueFull
from .holder import ModelHolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """How one request's sequences are drawn and when they end."""

    max_tokens: int  # new tokens at most ("length" when reached)
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # the text ends before the first of these ("stop"); they are never sent
    seed: int | None = None  # the same seed, the same draws


@dataclass(frozen=True)
class Delta:
    index: int  # which of the request's prompts
    text: str


@dataclass(frozen=True)
class Finished:
    index: int
    reason: str  # "stop": an end-of-sequence token or a stop string; "length": max_tokens, the context or the time
    text: str  # the whole completion
    prompt_tokens: int
    completion_tokens: int  # tokens generated, an end-of-sequence token included
    timed_out: bool = False  # ended by DAS_GENERATION_TIMEOUT_S (reason "length")


@dataclass(frozen=True)
class Failed:
    message: str


Event = Delta | Finished | Failed


@dataclass
class GenerationRequest:
    model: object  # the loaded version (serving.model.LoadedModel), its `decoder` the torch side
    prompts: list[list[int]]
    sampling: Sampling
    sink: Callable[[Event], None]
    deadline: float  # time.monotonic() after which its sequences end ("length")
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The client went away: its sequences leave the batch at the next step, freeing their slots."""
        self.cancelled.set()


@dataclass
class _Sequence:
    request: GenerationRequest
    index: int
    prompt_tokens: int
    sampler: object  # serving.decoding.Sampler
    generated: list[int] = field(default_factory=list)
    sent: str = ""  # the text sent in deltas so far
    done: bool = False


@dataclass
class _Group:
    """The sequences of one version decoding together, row k of `rows` being sequences[k]."""

    decoder: object  # serving.decoding.CausalDecoder
    sequences: list[_Sequence] = field(default_factory=list)
    rows: object | None = None  # serving.decoding.Rows


class GenerationScheduler:
    def __init__(self, holder: ModelHolder | None, max_concurrent: int, queue_size: int, timeout_s: float) -> None:
        self.holder, self.max_concurrent, self.timeout_s = holder, max_concurrent, timeout_s
        self.queue: queue.Queue[GenerationRequest | None] = queue.Queue(maxsize=queue_size)
        self._held: GenerationRequest | None = None  # the next request, waiting for enough free slots
        self._groups: dict[int, _Group] = {}  # id(decoder) -> its running sequences
        self._stopped = False
        self.on_step: Callable[[int], None] = lambda rows: None  # each decode step, with its rows (the API's metrics)
        # each sequence that ended, with how: stop, length, timeout (also "length" to the client), cancelled, failed
        self.on_end: Callable[[str], None] = lambda how: None
        self.thread = threading.Thread(target=self._loop, name="das-generation", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stopped = True
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        self.thread.join(10)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def running(self) -> int:
        """Sequences decoding now."""
        return sum(len(group.sequences) for group in list(self._groups.values()))

    def depth(self) -> int:
        """Requests waiting for free sequences."""
        return self.queue.qsize() + (self._held is not None)

    def submit(self, model: object, prompts: list[list[int]], sampling: Sampling,
               sink: Callable[[Event], None]) -> GenerationRequest:
        """Queue a request (its prompts checked: none empty, each within the model's context with max_tokens);
        QueueFull when the queue is. `sink` hears its events from the scheduler's thread."""
        if not prompts or len(prompts) > self.max_concurrent:
            raise ValueError(f"a request holds 1 to {self.max_concurrent} prompts, not {len(prompts)}")
        request = GenerationRequest(model, prompts, sampling, sink, time.monotonic() + self.timeout_s)
        try:
            self.queue.put_nowait(request)
        except queue.Full:
            raise QueueFull("the generation queue is full") from None
        return request

    def _loop(self) -> None:
        while not self._stopped:
            starting = self._admitted(wait=not self._groups)
            if self._stopped:
                self._refuse(starting)
                break
            with self.holder.turn() if self.holder is not None else nullcontext():
                for request in starting:
                    self._start(request)
                for key, group in list(self._groups.items()):
                    self._advance(group)
                    if not group.sequences:
                        del self._groups[key]
        self._refuse([s.request for group in self._groups.values() for s in group.sequences])

    def _refuse(self, requests: list[GenerationRequest]) -> None:
        """At stop: what was admitted or runs hears that it ends, and so does what still waits in the queue."""
        while True:
            try:
                waiting = self.queue.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                requests.append(waiting)
        if self._held is not None:
            requests.append(self._held)
            self._held = None
        for request in {id(r): r for r in requests}.values():
            _tell(request, Failed("the server is stopping; send the request again"))

    def _admitted(self, wait: bool) -> list[GenerationRequest]:
        """The queued requests that fit the free slots, in order (waiting for one when nothing runs)."""
        starting: list[GenerationRequest] = []
        free = self.max_concurrent - self.running()
        while True:
            request = self._held
            self._held = None
            if request is None:
                try:
                    request = self.queue.get(timeout=1.0) if wait and not starting else self.queue.get_nowait()
                except queue.Empty:
                    return starting
            if request is None:  # stop()
                self._stopped = True
                return starting
            if len(request.prompts) > free:
                self._held = request
                return starting
            free -= len(request.prompts)
            starting.append(request)

    def _start(self, request: GenerationRequest) -> None:
        """Prefill each prompt of an admitted request alone and add it to its version's batch."""
        if request.cancelled.is_set():
            for _ in request.prompts:
                self._ended("cancelled")
            return
        decoder = getattr(request.model, "decoder", None)
        if decoder is None:  # the API refuses a masked version first (409); nothing must stop this thread
            self._fail(request, TypeError(f"{getattr(request.model, 'version', '?')} does not generate text"),
                       len(request.prompts))
            return
        group = self._groups.setdefault(id(decoder), _Group(decoder))
        sampling = request.sampling
        try:
            for index, ids in enumerate(request.prompts):
                rows = decoder.prefill(ids)
                sampler = decoder.sampler(sampling.temperature, sampling.top_p,
                                          None if sampling.seed is None else sampling.seed + index)
                group.rows = rows if group.rows is None else group.rows.join(rows)
                group.sequences.append(_Sequence(request, index, len(ids), sampler))  # row k is sequence k
        except Exception as err:  # noqa: BLE001 - this request fails; the batch it would join goes on
            log.exception("a prompt could not be prefilled")
            group.sequences = [s for s in group.sequences if s.request is not request]  # its rows were the last
            group.rows = group.rows.keep(list(range(len(group.sequences)))) if group.sequences else None
            self._fail(request, err, len(request.prompts))

    def _advance(self, group: _Group) -> None:
        """One token for every sequence of the group: drawn from its last logits, sent, checked for its end; the
        sequences that go on run one step of the model together."""
        now = time.monotonic()
        try:
            for row, sequence in enumerate(group.sequences):
                self._next_token(group.decoder, sequence, group.rows.logits[row], now)
            keep = [row for row, sequence in enumerate(group.sequences) if not sequence.done]
            if len(keep) < len(group.sequences):
                group.sequences = [group.sequences[row] for row in keep]
                group.rows = group.rows.keep(keep) if keep else None
            if group.sequences:
                self.on_step(len(group.sequences))
                group.rows = group.decoder.step(group.rows, [s.generated[-1] for s in group.sequences])
        except Exception as err:  # noqa: BLE001 - the group's requests fail; other versions' groups go on
            log.exception("a decode step failed")
            for request in {id(s.request): s.request for s in group.sequences}.values():
                self._fail(request, err, sum(s.request is request for s in group.sequences))
            group.sequences, group.rows = [], None

    def _fail(self, request: GenerationRequest, err: Exception, sequences: int) -> None:
        _tell(request, Failed(f"generation failed ({type(err).__name__}: {err})"[:500]))
        for _ in range(sequences):
            self._ended("failed")

    def _ended(self, how: str) -> None:
        try:
            self.on_end(how)
        except Exception:  # noqa: BLE001 - a metric must never stop the scheduler
            log.exception("on_end failed")

    def _next_token(self, decoder, sequence: _Sequence, logits, now: float) -> None:
        request = sequence.request
        if request.cancelled.is_set():
            sequence.done = True
            self._ended("cancelled")
            return
        if now > request.deadline:
            self._finish(decoder, sequence, "length", decoder.tokenizer.text(sequence.generated), timed_out=True)
            return
        token = sequence.sampler.next(logits)
        sequence.generated.append(token)
        ends = token in decoder.eos_ids  # counted as generated; never part of the text
        text = decoder.tokenizer.text(sequence.generated[:-1] if ends else sequence.generated)
        stop_at = _first_stop(text, request.sampling.stop)
        if ends or stop_at is not None:
            self._finish(decoder, sequence, "stop", text if stop_at is None else text[:stop_at])
        elif (len(sequence.generated) >= request.sampling.max_tokens
              or sequence.prompt_tokens + len(sequence.generated) >= decoder.context):
            self._finish(decoder, sequence, "length", text)
        else:
            safe = _sendable(text, request.sampling.stop)
            if len(safe) > len(sequence.sent) and safe.startswith(sequence.sent):
                _tell(request, Delta(sequence.index, safe[len(sequence.sent):]))
                sequence.sent = safe

    def _finish(self, decoder, sequence: _Sequence, reason: str, text: str, timed_out: bool = False) -> None:
        sequence.done = True
        self._ended("timeout" if timed_out else reason)
        request = sequence.request
        if len(text) > len(sequence.sent) and text.startswith(sequence.sent):
            _tell(request, Delta(sequence.index, text[len(sequence.sent):]))
        if timed_out:
            log.info("a generation ran past DAS_GENERATION_TIMEOUT_S after %d tokens: ended as 'length'",
                     len(sequence.generated), extra={"event": "generation_timeout",
                                                     "tokens": len(sequence.generated)})
        _tell(request, Finished(sequence.index, reason, text, sequence.prompt_tokens, len(sequence.generated),
                                timed_out))


def _tell(request: GenerationRequest, event: Event) -> None:
    try:
        request.sink(event)
    except Exception:  # noqa: BLE001 - a listener's failure must not stop the scheduler
        log.exception("a generation listener failed")


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string begins in `text`, if one is in it."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


def _sendable(text: str, stops: tuple[str, ...]) -> str:
    """The part of `text` that may be sent now: without a trailing half character (a byte-level token may end inside
    one: the replacement character) and without an ending that may be the start of a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:n]):
                hold = n
                break
    return text[:len(text) - hold]
