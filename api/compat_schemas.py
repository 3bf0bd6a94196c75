"""Request and response models of the routes that the clients people already have call (api/routes/compat.py):
text-embeddings-inference's (TEI) POST /embed, POST /tokenize and GET /info, and Hugging Face's inference API at
POST / (huggingface_hub's InferenceClient: feature_extraction and fill_mask).

Field names and defaults are theirs. What this service does not do is a 422 that names the field and says what to
send instead, never silently ignored: truncation from the left, sentence-transformers prompts, fill-mask targets.
Errors keep this API's shape ({"detail": ...}, api.schemas.ErrorOut), not TEI's {"error", "error_type"}.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from das_formats.texts import FILL_MASK_MAX_TOP_K

from .schemas import Texts


def _right_only(value: str | None) -> str | None:
    if value is not None and value.lower() == "left":
        raise ValueError("truncation from the left is not offered: a text is cut at its end; send 'right' or leave "
                         "truncation_direction out")
    return value


def _no_prompt(value: str | None) -> str | None:
    if value is not None:
        raise ValueError("this model has no named prompts (sentence-transformers' `prompts`); put any prefix in the "
                         "text itself and leave prompt_name out")
    return value


# TEI's enum is "Right"/"Left"; its clients send them in lower case
RightOnly = Annotated[Literal["right", "Right", "left", "Left"] | None, AfterValidator(_right_only),
                      Field(description="only 'right' (the default): a text is cut at its end")]
NoPrompt = Annotated[str | None, AfterValidator(_no_prompt),
                     Field(description="not offered: this model has no named prompts")]


class TextsOrText(BaseModel):
    """TEI's `inputs`: one text or a list of texts. Our `version` is accepted too (the same as ?version=)."""

    model_config = ConfigDict(extra="forbid")  # an unknown key is a 422 naming the nearest field (api.strict)

    inputs: str | Texts = Field(description="one text, or a list of texts (at most DAS_MAX_TEXTS)")
    version: str | None = Field(None, description="the version to answer with: a version id or an alias (the same "
                                "as ?version=); omitted: the active one")

    @field_validator("inputs")
    @classmethod
    def _some_text(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("`inputs` holds no text: send a text or a list of texts")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


class EmbedIn(TextsOrText):
    """TEI's /embed request."""

    normalize: bool = Field(True, description="L2-normalise each vector (TEI's default); false: the mean-pooled "
                            "vector as it is")
    truncate: bool | None = Field(None, description="cut a text longer than the model's maximum sequence at its end; "
                                  "false or omitted: such a text is a 422, unless the service runs with "
                                  "DAS_AUTO_TRUNCATE=true")
    truncation_direction: RightOnly = None
    prompt_name: NoPrompt = None

    def given(self, name: str) -> object:
        """A field's value; None: not sent."""
        return getattr(self, name, None)


class TokenizeIn(TextsOrText):
    """TEI's /tokenize request."""

    add_special_tokens: bool = Field(True, description="add the model's special tokens around each text ([CLS] and "
                                     "[SEP], or <s> and </s>), as the model reads it")
    prompt_name: NoPrompt = None


class InferenceParameters(BaseModel):
    """Hugging Face's `parameters` object: fill-mask's top_k, or feature extraction's options."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(None, ge=1, le=FILL_MASK_MAX_TOP_K, description="fill-mask: candidates per mask "
                              "token (default 5)")
    targets: list[str] | None = Field(None, description="not offered: the top_k most likely tokens are answered")
    normalize: bool | None = Field(None, description="feature extraction: as /embed's")
    truncate: bool | None = Field(None, description="as /embed's (both tasks)")
    truncation_direction: RightOnly = None
    prompt_name: NoPrompt = None

    @field_validator("targets")
    @classmethod
    def _no_targets(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            raise ValueError("fill-mask targets are not offered: the top_k most likely tokens are answered; leave "
                             "targets out and read the scores of the tokens you want from a larger top_k")
        return value


FILL_MASK_PARAMETERS = {"top_k", "targets"}  # a `parameters` object with nothing else asks for fill-mask


class InferenceIn(EmbedIn):
    """Hugging Face's inference request to POST /: {"inputs", "parameters"}, and TEI's /embed fields at the top
    level (InferenceClient.feature_extraction sends them there). A field given in both places must agree."""

    normalize: bool | None = Field(None, description="feature extraction: as /embed's (default true)")
    parameters: InferenceParameters | None = Field(None, description="Hugging Face's task parameters")

    @model_validator(mode="after")
    def _agree(self) -> InferenceIn:
        if self.parameters is not None:
            for name in ("normalize", "truncate", "truncation_direction"):
                ours, theirs = getattr(self, name), getattr(self.parameters, name)
                if ours is not None and theirs is not None and ours != theirs:
                    raise ValueError(f"{name} is {ours!r} and parameters.{name} is {theirs!r}; send one of them")
        return self

    def given(self, name: str) -> object:
        """A field's value, at the top level or in `parameters`; None: not sent."""
        ours = getattr(self, name, None)
        return ours if ours is not None else getattr(self.parameters, name, None)


# ------------------------------------------------------------------ answers
class TokenOut(BaseModel):
    """One token, as TEI's /tokenize shows it."""

    id: int
    text: str = Field(description="the characters of the text it covers; a special token's own text")
    special: bool = Field(description="a special token added around the text ([CLS], [SEP], <s>, ...)")
    start: int | None = Field(description="character offset of its first character in the text (None: special)")
    stop: int | None = Field(description="character offset after its last character (None: special)")


class FillMaskCandidateOut(BaseModel):
    """One candidate, as transformers' fill-mask pipeline (and Hugging Face's inference API) shows it."""

    sequence: str = Field(description="the text with this mask token replaced by token_str")
    score: float
    token: int = Field(description="the token id")
    token_str: str


class EmbeddingModelType(BaseModel):
    pooling: Literal["mean"] = "mean"


class ModelTypeOut(BaseModel):
    embedding: EmbeddingModelType


class InfoOut(BaseModel):
    """TEI's /info: the model and the router's limits, as this service has them."""

    model_id: str = Field(description="the base model of the answering version's lineage")
    model_sha: str = Field(description="the version that answers (v0003): what a request may pin with ?version=")
    model_dtype: str = Field(description="float32, or int8 with DAS_SERVE_INT8")
    model_type: ModelTypeOut
    max_concurrent_requests: int = Field(description="requests that may wait for the model (DAS_INFERENCE_QUEUE_SIZE)")
    max_input_length: int = Field(description="tokens the model reads of one text, special tokens included")
    max_batch_tokens: int = Field(description="tokens in one request, all texts (DAS_MAX_REQUEST_TOKENS)")
    max_batch_requests: int | None = Field(description="texts in one forward pass (DAS_MAX_BATCH_SIZE)")
    max_client_batch_size: int = Field(description="texts in one request (DAS_MAX_TEXTS)")
    auto_truncate: bool = Field(description="a text over max_input_length is cut, not refused (DAS_AUTO_TRUNCATE)")
    tokenization_workers: int = Field(description="the micro-batcher's thread tokenises")
    version: str = Field(description="this service's package version")
    sha: str | None = None
    docker_label: str | None = None
