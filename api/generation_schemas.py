"""Request and response models of text generation from a causal LM version (api/routes/generation.py): OpenAI's
POST /v1/completions and POST /v1/chat/completions, in the shapes of the openai SDK's types (`Completion`,
`ChatCompletion`, `ChatCompletionChunk`, `CompletionUsage`), plus this service's `version` (the version that
answered) and `?version=`/`version` pinning; `model` means what `version` means (a version id or an alias).

What is not offered is a 422 that names the field and says what to send instead, never silently ignored: `n` > 1,
penalties, log probabilities, token ids as a prompt. OpenAI's `user` is accepted and not used.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_STRINGS = 4  # OpenAI's "up to 4 sequences"
MAX_STOP_CHARS = 200


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(False, description="a last chunk with no choices and the request's `usage`")
    include_obfuscation: bool | None = Field(None, description="OpenAI's: accepted; no obfuscation is ever sent")


class GenerationIn(BaseModel):
    """What the two generation routes share."""

    model_config = ConfigDict(extra="forbid")  # an unknown key is a 422 naming the nearest field (api.strict)

    model: str | None = Field(None, description="the version to generate with, an id or an alias (omitted: the active "
                              "one); the openai SDK always sends it: `production` is the active version")
    version: str | None = Field(None, description="the same as `model` (this API's name for it)")
    max_tokens: int | None = Field(None, ge=1, description="new tokens at most (at most DAS_MAX_NEW_TOKENS); omitted: "
                                   "16 for a completion (OpenAI's default), DAS_MAX_NEW_TOKENS for a chat, at most "
                                   "what the model's context leaves")
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy (always the most likely token)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: draw from the smallest set of tokens whose "
                         "probability reaches top_p")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP_STRINGS} strings: the text ends before "
                                         "the first one generated (finish_reason stop), which is not included")
    seed: int | None = Field(None, ge=0, le=2**63 - 1000, description="the same seed, prompt and settings give the "
                             "same text on the same version")
    n: int = Field(1, ge=1, description="completions per prompt: only 1 is offered")
    stream: bool = Field(False, description="server-sent events: `data: {chunk}` lines, then `data: [DONE]`")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256, description="OpenAI's end-user id: accepted and not used")
    frequency_penalty: float | None = Field(None, description="not offered: only 0")
    presence_penalty: float | None = Field(None, description="not offered: only 0")

    @field_validator("n")
    @classmethod
    def _one(cls, value: int) -> int:
        if value != 1:
            raise ValueError("n > 1 is not offered: send the request n times (with different seeds for different "
                             "samples)")
        return value

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("penalties are not offered: leave it out or send 0")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(not stop or len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ValueError(f"a stop string holds 1 to {MAX_STOP_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _options_with_stream(self) -> GenerationIn:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only for stream: true")
        if self.model is not None and self.version is not None and self.model != self.version:
            raise ValueError(f"model {self.model!r} and version {self.version!r} differ; send one of them")
        return self

    @property
    def named(self) -> str | None:
        """The version the body names (model or version)."""
        return self.model if self.model is not None else self.version

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionIn(GenerationIn):
    """OpenAI's completion request: text after a prompt (one, or a list: one choice each, `index` in order)."""

    prompt: str | list[str] = Field(description="a text, or a list of texts (at most DAS_MAX_CONCURRENT_SEQUENCES); "
                                    "token ids are not taken")
    logprobs: int | None = Field(None, description="not offered: leave it out")
    echo: bool = Field(False, description="not offered: only false")

    @field_validator("prompt")
    @classmethod
    def _some(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("the list of prompts is empty")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("log probabilities are not offered: leave logprobs out")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not offered: the answer holds the completion only")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(description="a text, or a list of text parts (joined)")
    name: str | None = Field(None, max_length=64, description="given to the chat template as the message's `name`")

    def as_template_input(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": self.role, "content": content} | ({"name": self.name} if self.name is not None else {})


class ChatIn(GenerationIn):
    """OpenAI's chat completion request: the assistant's next message after `messages`, through the version's chat
    template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool | None = Field(None, description="not offered: leave it out or send false")

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("log probabilities are not offered: leave logprobs out")
        return value

    @model_validator(mode="after")
    def _one_max(self) -> ChatIn:
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens differ; send one of them")
            self.max_tokens = self.max_completion_tokens
        return self


class UsageOut(BaseModel):
    prompt_tokens: int = Field(description="tokens of the prompts, as the model read them (specials included)")
    completion_tokens: int = Field(description="tokens generated (an end-of-sequence token included)")
    total_tokens: int


class CompletionChoiceOut(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = Field(description="stop: an end-of-sequence token or a stop "
                                                            "string; length: max_tokens, the model's context or "
                                                            "DAS_GENERATION_TIMEOUT_S; null in a stream's chunks "
                                                            "before the last")


class CompletionOut(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str = Field(description="the version that answered")
    version: str
    choices: list[CompletionChoiceOut]
    usage: UsageOut | None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoiceOut(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="the version that answered")
    version: str
    choices: list[ChatChoiceOut]
    usage: UsageOut
