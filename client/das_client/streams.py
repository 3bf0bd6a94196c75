"""`GenerationStream`: a streamed completion (server-sent events in OpenAI's chunk shapes) as an iterator of text."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx

from .errors import DasError, Unreachable
from .models import Usage, from_json


class GenerationStream:
    """Iterate for the pieces of text as the server generates them; once iterated to the end, `version`,
    `finish_reason` and `usage` say how it went. Leaving the iteration early (or `close()`) closes the connection,
    and the server stops generating for it.

        with das.stream_complete("the licence", max_tokens=50) as stream:
            for piece in stream:
                print(piece, end="", flush=True)
        print(stream.finish_reason, stream.usage)
    """

    def __init__(self, opened: AbstractContextManager[httpx.Response], chat: bool,
                 error_from: Callable[[httpx.Response], DasError]) -> None:
        self._opened, self._chat, self._error_from = opened, chat, error_from
        self.version: str | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.text = ""  # what was received so far
        self._reading: Iterator[str] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._reading is None:
            self._reading = self._read()
        return self._reading

    def _read(self) -> Iterator[str]:
        try:
            with self._opened as response:
                if response.is_error:
                    response.read()
                    raise self._error_from(response)
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        return
                    yield from self._pieces(json.loads(line[len("data: "):]))
        except httpx.TransportError as err:
            raise Unreachable(f"the stream from the server broke ({type(err).__name__}: {err})") from err

    def _pieces(self, chunk: dict[str, Any]) -> Iterator[str]:
        if "error" in chunk:  # the generation failed on the server after the answer had begun
            raise DasError(500, str(chunk["error"].get("message", chunk["error"])), body=chunk)
        self.version = chunk.get("version", self.version)
        if chunk.get("usage"):
            self.usage = from_json(Usage, chunk["usage"])
        for choice in chunk.get("choices", []):
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            piece = (choice.get("delta") or {}).get("content") if self._chat else choice.get("text")
            if piece:
                self.text += piece
                yield piece

    def close(self) -> None:
        """Stop reading: the connection closes (nothing was sent if the stream was never iterated)."""
        if self._reading is not None:
            self._reading.close()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
