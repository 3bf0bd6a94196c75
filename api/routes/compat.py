"""The routes that the clients people already have call, answered by the same micro-batcher, limits, tokens and
version pinning (?version=, or the body's `version`) as /v1:

- text-embeddings-inference's (TEI) POST /embed, POST /tokenize and GET /info, in TEI's shapes, for what is written
  against a TEI server;
- POST /, where huggingface_hub's `InferenceClient(base_url=URL)` posts both `feature_extraction` and `fill_mask`.
  Which task answers is read from the texts: fill-mask when every text holds the answering version's mask token
  ([MASK] for BERT, <mask> for RoBERTa), feature extraction (TEI's /embed) when none does; a causal LM (no mask
  token) answers feature extraction, and a request shaped as fill-mask a 409 naming its kind. A mix is a 422, and so
  is a request of one task sent to the other: `normalize` on texts with the mask token; top_k, or a `parameters`
  object holding nothing but fill-mask's (InferenceClient.fill_mask sends `{}`), on texts without it.

The OpenAI SDK's `embeddings.create` posts to /v1/embeddings (api/routes/inference.py). Readiness (/readyz) and
error answers ({"detail": ...}) stay this API's own.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from das_settings import package_version
from serving.holder import Servable

from ..compat_schemas import (
    FILL_MASK_PARAMETERS,
    EmbedIn,
    FillMaskCandidateOut,
    InferenceIn,
    InfoOut,
    TokenizeIn,
    TokenOut,
)
from ..deps import ServiceDep
from ..texts import answer_texts, json_response
from ..versions import VersionQuery, served_version, version_manifest

router = APIRouter(tags=["compatibility"])  # the inference token: api.deps.inference_auth, app-wide
DEFAULT_TOP_K = 5  # transformers' fill-mask pipeline's


@router.post("/embed", response_model=list[list[float]])
async def embed(*, service: ServiceDep, body: EmbedIn, version: VersionQuery = None) -> Response:
    """TEI's /embed: one vector per input, in order: the mean-pooled last hidden states, L2-normalised unless
    `normalize` is false (the same vectors as /v1/embeddings)."""
    model = await served_version(service, version, body.version)
    return json_response(await _vectors(service, body, model))


@router.post("/tokenize", response_model=list[list[TokenOut]])
async def tokenize(*, service: ServiceDep, body: TokenizeIn, version: VersionQuery = None) -> Response:
    """TEI's /tokenize: per input, its tokens (id, text, special, start, stop: character offsets), whole, as the
    answering version's tokenizer cuts them."""
    model = await served_version(service, version, body.version)
    # truncate: tokenising is answered for the whole text, never refused for its length
    _, tokens, _ = await answer_texts(service, "tokenize", body.texts, truncate=True, model=model,
                                      special_tokens=body.add_special_tokens)
    return json_response(tokens)


@router.get("/info", response_model=InfoOut)
async def info(*, service: ServiceDep, version: VersionQuery = None) -> InfoOut:
    """TEI's /info: the answering version (model_sha) and its lineage's base model, and this service's limits."""
    model = _answering(service, await served_version(service, version, None))
    manifest = await run_in_threadpool(version_manifest, service, model.version)  # 409 for a damaged one
    settings = service.settings
    return InfoOut(model_id=manifest.base_model, model_sha=model.version,
                   model_dtype="int8" if settings.serve_int8 else "float32", model_type={"embedding": {}},
                   max_concurrent_requests=settings.inference_queue_size, max_input_length=model.max_tokens,
                   max_batch_tokens=settings.max_request_tokens, max_batch_requests=settings.max_batch_size,
                   max_client_batch_size=settings.max_texts, auto_truncate=settings.auto_truncate,
                   tokenization_workers=1, version=package_version())


@router.post("/", response_model=list[list[float]] | list[FillMaskCandidateOut] | list[list[FillMaskCandidateOut]],
             summary="Hugging Face inference: feature extraction or fill-mask")
async def hugging_face_inference(*, service: ServiceDep, body: InferenceIn, version: VersionQuery = None) -> Response:
    """What huggingface_hub's InferenceClient(base_url=URL) posts. Texts that all hold the mask token: fill-mask,
    answered as transformers' pipeline does (one text with one mask: its candidates {sequence, score, token,
    token_str}; a list per mask token when a text holds several; a list per text when `inputs` is a list). Texts
    without it: feature extraction, answered as /embed (a list of vectors). A mix of the two is a 422."""
    model = await served_version(service, version, body.version)
    answering = _answering(service, model)
    mask = answering.mask_token
    if mask is None:  # a causal LM: feature extraction only
        _refuse_fill_mask(body, answering)
        return json_response(await _vectors(service, body, model))
    if not _fills_masks(body, mask):
        return json_response(await _vectors(service, body, model))
    top_k = body.given("top_k") or DEFAULT_TOP_K
    _, results, _ = await answer_texts(service, "fill_mask", body.texts, top_k, bool(body.given("truncate")), model)
    per_text = [_pipeline_answer(text, mask, per_mask) for text, per_mask in zip(body.texts, results, strict=True)]
    return json_response(per_text[0] if isinstance(body.inputs, str) else per_text)


async def _vectors(service, body: EmbedIn | InferenceIn, model: Servable | None) -> list[list[float]]:
    """The vectors of /embed's answer (normalised unless the body says normalize: false)."""
    kind = "embed_unnormalised" if body.given("normalize") is False else "embed"
    _, vectors, _ = await answer_texts(service, kind, body.texts, truncate=bool(body.given("truncate")), model=model)
    return vectors


def _answering(service, model: Servable | None) -> Servable:
    """The version that answers: the one the request names, else the active one; 503 while none is loaded."""
    model = model if model is not None else service.holder.current
    if model is None:
        raise HTTPException(503, "no model version is loaded yet", headers={"Retry-After": "2"})
    return model


def _fills_masks(body: InferenceIn, mask: str) -> bool:
    """POST /'s rule: fill-mask when every text holds the mask token, feature extraction when none does. A mix is a
    422, and so is a request of one task sent to the other: `normalize` with mask tokens; top_k, or a `parameters`
    object with nothing but fill-mask's in it (what InferenceClient.fill_mask sends), without them."""
    holding = [mask in text for text in body.texts]
    if any(holding) and not all(holding):
        raise HTTPException(422, f"{sum(holding)} of {len(holding)} texts hold the mask token {mask!r}: POST / fills "
                                 f"masks when every text holds {mask!r} and answers feature extraction when none "
                                 "does; send the two kinds in separate requests")
    if all(holding):
        if body.given("normalize") is not None:
            raise HTTPException(422, f"the texts hold the mask token {mask!r}, so POST / answers fill-mask, which "
                                     "takes no 'normalize'; leave it out, or send the texts to POST /embed")
        return True
    if body.given("top_k") is not None or (body.parameters is not None
                                           and body.parameters.model_fields_set <= FILL_MASK_PARAMETERS):
        raise HTTPException(422, f"the texts hold no mask token ({mask!r}), so there is no mask to fill: put {mask} "
                                 "in each text; to embed them, send no fill-mask `parameters` (or POST /embed)")
    return False


def _refuse_fill_mask(body: InferenceIn, model: Servable) -> None:
    """A causal LM has no mask token: a request shaped as fill-mask (top_k, or a `parameters` object with nothing but
    fill-mask's in it) is a 409 naming the version's kind; any other is feature extraction."""
    if body.given("top_k") is not None or (body.parameters is not None
                                           and body.parameters.model_fields_set <= FILL_MASK_PARAMETERS):
        raise HTTPException(409, f"{model.version} is a {model.kind} language model: it has no mask token to fill "
                                 "(fill-mask needs a masked LM); it answers feature extraction here, and generates "
                                 "text at POST /v1/completions and /v1/chat/completions")


def _pipeline_answer(text: str, mask: str, per_mask: list[list[dict]]) -> list:
    """One text's fill-mask answer in transformers' pipeline shape: per mask token, its candidates; a text with one
    mask token gets the list of its candidates alone."""
    answers = [[{"sequence": _filled(text, mask, k, c["token"]), "score": c["score"], "token": c["token_id"],
                 "token_str": c["token"]} for c in candidates] for k, candidates in enumerate(per_mask)]
    return answers[0] if len(answers) == 1 else answers


def _filled(text: str, mask: str, k: int, token: str) -> str:
    """`text` with its k-th mask token replaced by `token` (the others stay)."""
    parts = text.split(mask)
    return mask.join(parts[:k + 1]) + token + mask.join(parts[k + 1:])
