"""Text generation from a causal LM version, OpenAI-shaped: POST /v1/completions and POST /v1/chat/completions.

Every bound is checked before any work: max_tokens (DAS_MAX_NEW_TOKENS), each prompt's tokens (DAS_MAX_PROMPT_TOKENS,
and the model's context with max_tokens), the prompts of one request (DAS_MAX_CONCURRENT_SEQUENCES); a full
generation queue is a 503 with Retry-After. The request takes its version once, when it arrives (the one it names, or
the active one), and the scheduler (serving/generation.py) decodes it on that version to its end, whatever is
activated meanwhile. `stream: true` answers server-sent events: `data: {chunk}` per piece of text, then
`data: [DONE]`; a client that goes away frees its sequences at the next decode step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from serving.errors import InputError, NoChatTemplate, QueueFull
from serving.generation import Delta, Failed, Finished, GenerationRequest, Sampling
from serving.holder import Servable

from ..deps import ServiceDep
from ..generation_schemas import ChatCompletionOut, ChatIn, CompletionIn, CompletionOut, GenerationIn
from ..texts import json_response
from ..versions import VersionQuery, served_version

router = APIRouter(prefix="/v1", tags=["generation"])  # the inference token: api.deps.inference_auth, app-wide
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's, for /v1/completions; a chat's is DAS_MAX_NEW_TOKENS
DISCONNECT_POLL_S = 0.5


@router.post("/completions", response_model=CompletionOut)
async def completions(*, service: ServiceDep, body: CompletionIn, request: Request,
                      version: VersionQuery = None) -> Response:
    """Text after each prompt, from a causal LM version (a masked one answers 409). `stream: true`: server-sent
    events of `text_completion` chunks, `data: [DONE]` last."""
    model = await _causal(service, version, body)
    _check_max_tokens(service, body)
    if len(body.prompts) > service.settings.max_concurrent_sequences:
        raise HTTPException(422, f"at most {service.settings.max_concurrent_sequences} prompts per request "
                                 f"(DAS_MAX_CONCURRENT_SEQUENCES), got {len(body.prompts)}")
    prompts = await run_in_threadpool(_tokenised, [(model.decoder.tokenizer.prompt_ids, p) for p in body.prompts])
    return await _answer(service, request, model, body, prompts, "text_completion", COMPLETION_DEFAULT_MAX_TOKENS)


@router.post("/chat/completions", response_model=ChatCompletionOut)
async def chat_completions(*, service: ServiceDep, body: ChatIn, request: Request,
                           version: VersionQuery = None) -> Response:
    """The assistant's next message after `messages`, through the version's chat template (409 when its tokenizer
    has none), from a causal LM version. `stream: true`: server-sent events of `chat.completion.chunk` chunks."""
    model = await _causal(service, version, body)
    _check_max_tokens(service, body)
    messages = [message.as_template_input() for message in body.messages]
    prompts = await run_in_threadpool(_tokenised, [(model.decoder.tokenizer.chat_ids, messages)])
    return await _answer(service, request, model, body, prompts, "chat.completion", service.settings.max_new_tokens)


async def _causal(service, version: str | None, body: GenerationIn) -> Servable:
    """The version that answers (named, else the active one, taken now), which must be a causal LM."""
    model = await served_version(service, version, body.named)
    model = model if model is not None else service.holder.current
    if model is None:
        raise HTTPException(503, "no model version is loaded yet", headers={"Retry-After": "2"})
    if model.decoder is None:
        raise HTTPException(409, f"{model.version} is a {model.kind} language model: it does not generate text "
                                 "(that needs a causal LM, such as a store whose base is SmolLM2); it answers "
                                 "POST /v1/fill-mask and /v1/embeddings")
    return model


def _check_max_tokens(service, body: GenerationIn) -> None:
    limit = service.settings.max_new_tokens
    if body.max_tokens is not None and body.max_tokens > limit:
        raise HTTPException(422, f"max_tokens is {body.max_tokens}; this server generates at most {limit} tokens per "
                                 "request (DAS_MAX_NEW_TOKENS): ask for fewer")


def _tokenised(calls: list[tuple]) -> list[list[int]]:
    """Each prompt's token ids (run off the event loop); 409 for a tokenizer without a chat template, 422 for a
    prompt the tokenizer refuses."""
    try:
        return [tokenise(value) for tokenise, value in calls]
    except NoChatTemplate as err:
        raise HTTPException(409, str(err)) from None
    except InputError as err:
        raise HTTPException(422, str(err)) from None


def _sampling(service, model: Servable, body: GenerationIn, prompts: list[list[int]], default_max: int) -> Sampling:
    """The request's sampling, its prompts checked against DAS_MAX_PROMPT_TOKENS and, with max_tokens, the model's
    context (max_tokens omitted: the default, at most what the context leaves)."""
    limit, context = service.settings.max_prompt_tokens, model.decoder.context
    for i, ids in enumerate(prompts):
        if not ids:
            raise HTTPException(422, f"prompt {i} is empty: it holds no token")
        if len(ids) > limit:
            raise HTTPException(422, f"prompt {i} has {len(ids)} tokens; the limit is {limit} (DAS_MAX_PROMPT_TOKENS): "
                                     "shorten it")
    longest = max(len(ids) for ids in prompts)
    max_tokens = body.max_tokens if body.max_tokens is not None else min(default_max, context - longest)
    if longest + max_tokens > context or max_tokens < 1:
        raise HTTPException(422, f"a prompt of {longest} tokens and max_tokens {max_tokens} need {longest + max_tokens}"
                                 f" positions; {model.version} reads at most {context} (its context): shorten the "
                                 "prompt or ask for fewer tokens")
    return Sampling(max_tokens, body.temperature, body.top_p, body.stops, body.seed)


class _Listener:
    """The scheduler's events for one request, moved onto the event loop."""

    def __init__(self) -> None:
        self.loop, self.events = asyncio.get_running_loop(), asyncio.Queue()

    def __call__(self, event) -> None:  # called on the scheduler's thread
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


async def _answer(service, request: Request, model: Servable, body: GenerationIn, prompts: list[list[int]],
                  kind: str, default_max: int) -> Response:
    sampling = _sampling(service, model, body, prompts, default_max)
    listener = _Listener()
    try:
        run = service.generation.submit(model, prompts, sampling, listener)
    except QueueFull:
        raise HTTPException(503, "too many generation requests are waiting; retry shortly",
                            headers={"Retry-After": "1"}) from None
    head = {"id": f"{'cmpl' if kind == 'text_completion' else 'chatcmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()), "model": model.version, "version": model.version}
    if body.stream:
        return StreamingResponse(_stream(run, listener, head, kind, len(prompts), body.include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    ended = await _until_finished(request, run, listener, len(prompts))
    usage = _usage(ended)
    if kind == "text_completion":
        choices = [{"index": e.index, "text": e.text, "logprobs": None, "finish_reason": e.reason} for e in ended]
    else:
        choices = [{"index": e.index, "message": {"role": "assistant", "content": e.text}, "logprobs": None,
                    "finish_reason": e.reason} for e in ended]
    return json_response({**head, "object": kind, "choices": choices, "usage": usage})


async def _until_finished(request: Request, run: GenerationRequest, listener: _Listener,
                          count: int) -> list[Finished]:
    """Every sequence's Finished, in the prompts' order; a client that goes away cancels the run; a failed pass is a
    500 with the reason."""
    watcher = asyncio.create_task(_cancel_when_gone(request, run))
    try:
        ended: dict[int, Finished] = {}
        while len(ended) < count:
            event = await listener.events.get()
            if isinstance(event, Failed):
                raise HTTPException(500, event.message)
            if isinstance(event, Finished):
                ended[event.index] = event
        return [ended[i] for i in range(count)]
    finally:
        watcher.cancel()
        run.cancel()  # nothing left to do once answered; a run that ended early (an error) stops here too


async def _cancel_when_gone(request: Request, run: GenerationRequest) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    run.cancel()


async def _stream(run: GenerationRequest, listener: _Listener, head: dict, kind: str, count: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk shapes; the run is cancelled if the client goes away (this generator is
    closed) before its end."""
    chunk_kind = "text_completion" if kind == "text_completion" else "chat.completion.chunk"
    extra = {"usage": None} if include_usage else {}

    def chunk(choice: dict) -> str:
        return _event({**head, "object": chunk_kind, "choices": [choice], **extra})

    try:
        ended: list[Finished] = []
        if kind != "text_completion":  # a chat's stream opens each choice with the assistant's role
            for i in range(count):
                yield chunk({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None})
        while len(ended) < count:
            event = await listener.events.get()
            if isinstance(event, Failed):
                yield _event({"error": {"message": event.message, "type": "server_error", "code": None}})
                break
            if isinstance(event, Delta):
                yield chunk(_piece(kind, event.index, event.text, None))
            elif isinstance(event, Finished):
                ended.append(event)
                yield chunk(_piece(kind, event.index, "", event.reason))
        if include_usage and len(ended) == count:
            yield _event({**head, "object": chunk_kind, "choices": [], "usage": _usage(ended)})
        yield "data: [DONE]\n\n"
    finally:
        run.cancel()


def _piece(kind: str, index: int, text: str, reason: str | None) -> dict:
    if kind == "text_completion":
        return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
    return {"index": index, "delta": {"content": text} if reason is None else {}, "logprobs": None,
            "finish_reason": reason}


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _usage(ended: list[Finished]) -> dict:
    prompt, completion = sum(e.prompt_tokens for e in ended), sum(e.completion_tokens for e in ended)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
