"""`das --url URL generate PROMPT`: text from a causal LM version on the server (POST /v1/completions, or with --chat
/v1/chat/completions through the version's chat template), through `das_client`. The text goes to standard output,
how it ended (version, finish reason, tokens) to standard error."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .console import console, fail
from .remote_connection import connected


def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="the prompt; with --chat, the user's message")],
    chat: Annotated[bool, typer.Option("--chat", help="send the prompt as a chat's user message, through the "
                                                      "version's chat template (POST /v1/chat/completions)")] = False,
    system: Annotated[str | None, typer.Option(help="with --chat: a system message before it")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", min=1, help="new tokens at most (none: the server's default: 16 for a completion, "
                                    "DAS_MAX_NEW_TOKENS for a chat)")] = None,
    temperature: Annotated[float | None, typer.Option(min=0, max=2, help="0: greedy (none: 1)")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0, max=1, help="nucleus sampling (none: 1)")] = None,
    stop: Annotated[list[str] | None, typer.Option(
        "--stop", help="end the text before this string (repeat for up to 4)")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="the same seed gives the same text")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="print the text as it is generated")] = False,
    version: Annotated[str | None, typer.Option(
        "--version", help="the version to generate with: an id (v0003) or an alias (none: the active one)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the server's answer as JSON (not with --stream)")]
    = False,
) -> None:
    """Generate text with a causal LM version on the server (--url); a masked LM's store answers that it cannot."""
    if system is not None and not chat:
        fail("--system goes with --chat (a completion has no messages)")
    if as_json and stream:
        fail("--json prints a whole answer: leave out --stream, or --json")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": prompt}]
    options = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop or None,
               "seed": seed}
    with connected(ctx) as client:
        if stream:
            with (client.stream_chat(messages, version=version, **options) if chat else
                  client.stream_complete(prompt, version=version, **options)) as pieces:
                for piece in pieces:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            typer.echo()
            ended, usage = (pieces.version, pieces.finish_reason), pieces.usage
        else:
            answer = (client.chat(messages, version=version, **options) if chat else
                      client.complete(prompt, version=version, **options))
            if as_json:
                typer.echo(json.dumps(answer.raw, indent=2))
                return
            typer.echo(answer.text)
            ended, usage = (answer.version, answer.finish_reason), answer.usage
    tokens = f"{usage.prompt_tokens} prompt + {usage.completion_tokens} generated tokens" if usage else "no usage"
    console.print(f"{ended[0]}: finish_reason {ended[1]}, {tokens}", soft_wrap=True, highlight=False)
