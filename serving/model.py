"""A loaded model version that answers fill-mask and embeddings (torch lives here, not in api/)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel

from das_engine.answers import fill_mask_candidates, pooled
from das_engine.endtask import served_max_tokens
from das_engine.loading import load_lm
from das_engine.mlm import mean_pool
from das_engine.units import resolve_units

from .decoding import CausalDecoder, GenerationTokenizer
from .encoded import Encoded
from .encoders import RunnerSlot, TorchRunner
from .errors import InputError, TaskNotServed, WrongKind
from .onnx_cache import OnnxCache
from .tasks import TaskSet, predict

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


def same_tokenizer_files(tokenizer, a: Path, b: Path) -> bool:
    """True if `tokenizer` (loaded from folder b) is what folder a would load: each file it may have
    been read from (TOKENIZER_FILES and the class's vocab_files_names) is in both folders or in
    neither, byte for byte, and both configs name the same model_type and tokenizer_class (all that
    AutoTokenizer reads from config.json; the rest of it changes between versions)."""
    for name in {*TOKENIZER_FILES, *tokenizer.vocab_files_names.values()}:
        ours, theirs = a / name, b / name
        if ours.is_file() != theirs.is_file() or (ours.is_file() and ours.read_bytes() != theirs.read_bytes()):
            return False

    def names(folder: Path) -> tuple:
        config = json.loads((folder / "config.json").read_text("utf-8"))
        return config.get("model_type"), config.get("tokenizer_class")

    return names(a) == names(b)


def int8_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    """The encoder with its Linear layers as dynamic int8 ones (int8 weights; activations quantised per batch).
    Embeddings, LayerNorms and the MLM head stay fp32."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's deprecation notices, once per load
        warnings.simplefilter("ignore")
        return quantize_dynamic(encoder, {torch.nn.Linear}, dtype=torch.qint8)


@dataclass
class LoadedModel:
    version: str
    folder: Path
    model: PreTrainedModel  # a masked LM, or a causal one (kind)
    tokenizer: AutoTokenizer
    max_tokens: int
    device: torch.device
    runs: RunnerSlot  # torch, or the ONNX graphs of the same weights (serving.encoders)
    decoded: dict[int, str] = field(default_factory=dict)  # id -> the token as an answer shows it, decoded once
    tasks: TaskSet = field(default_factory=TaskSet)  # the end-task models served with this version
    kind: str = "masked"  # "masked" (fill-mask) or "causal" (generation: `decoder`), as das_engine.loading says
    decoder: CausalDecoder | None = None  # a causal LM's decoding steps (serving.generation runs them)

    @classmethod
    def load(cls, version: str, folder: Path, previous: LoadedModel | None = None, device: str = "cpu",
             int8: bool = False, onnx: OnnxCache | None = None) -> LoadedModel:
        """Load a version; `previous` (the one serving now) lends its tokenizer when the folders' tokenizer
        files are identical and their configs name the same tokenizer (`same_tokenizer_files`), as between
        versions of one lineage: building a tokenizer holds the GIL ~20 ms, a pause for every request.
        Sharing is safe because only the batcher thread tokenises (warm() does not); a causal LM's generation has
        a copy of its own, behind its own lock (serving.decoding.GenerationTokenizer), shared alike.

        `int8` (CPU only, DAS_SERVE_INT8) serves the encoder's Linear layers as dynamic int8 (docs/performance.md).
        `onnx` (the ONNX backend's cache): the encoder runs on the version's exported graph when the cache holds one,
        and otherwise on torch until the export that this load starts in the background is ready.
        A causal LM (Llama, GPT-2, ...) serves embeddings, end tasks and generation, on torch and in fp32 (the ONNX
        export and int8 are a masked LM's); its `decoder` runs generation."""
        reuse = previous is not None and same_tokenizer_files(previous.tokenizer, folder, previous.folder)
        shared = previous.tokenizer if reuse else None
        model, tokenizer, kind = load_lm(folder, tokenizer=shared)
        model.eval().to(device)
        if int8 and kind == "masked":
            model.base_model.encoder = int8_encoder(model.base_model.encoder)
        elif int8:
            log.warning("%s is a causal LM: it serves in fp32 (DAS_SERVE_INT8 applies to masked LMs)", version)
        max_tokens = served_max_tokens(model.config)
        slot = RunnerSlot(version, TorchRunner(model, resolve_units(model).mlm_head if kind == "masked" else None))
        graphs = onnx.graphs(folder, slot.move_to) if onnx is not None and kind == "masked" else None
        if graphs is not None:
            slot.move_to(graphs)
        decoder = None
        if kind == "causal":
            lent = previous.decoder if reuse and previous.decoder is not None else None
            words = lent.tokenizer if lent is not None else GenerationTokenizer(copy.deepcopy(tokenizer))
            decoder = CausalDecoder(model, words, torch.device(device))
        return cls(version, folder, model, tokenizer, max_tokens, torch.device(device), slot, kind=kind,
                   decoder=decoder)

    def with_tasks(self, tasks: TaskSet) -> LoadedModel:
        """The same backbone with another set of task models (a new object: requests hold the old one)."""
        return dataclasses.replace(self, tasks=tasks)

    def check_tasks(self, names: list[str]) -> None:
        """TaskNotServed unless every task named has a model served with this version."""
        for name in names:
            if name not in self.tasks.tasks:
                problem = self.tasks.problem(name)
                if problem is None:
                    raise TaskNotServed(f"task {name!r} is not registered", pending=False)
                if problem == "pending":
                    raise TaskNotServed(f"task {name!r} has no model on {self.version} yet", pending=True)
                raise TaskNotServed(f"task {name!r} is {problem}", pending=False, damaged=True)

    @property
    def backend(self) -> str:
        return self.runs.backend

    @property
    def mask_token(self) -> str | None:
        return self.tokenizer.mask_token if self.kind == "masked" else None

    @torch.inference_mode()
    def warm(self) -> None:
        """One pass through the encoder, the MLM head and the pooling, on ids made without the tokenizer
        (the tokenizer may be shared with the version answering requests now; see load)."""
        tok = self.tokenizer
        if self.decoder is not None:  # a causal LM: the pooling, and a prefill and a step of generation
            ids = torch.tensor([[self.pad_token_id] * 2], device=self.device)
            self._pooled(ids, torch.ones_like(ids))
            self.decoder.step(self.decoder.prefill([self.pad_token_id]), [self.pad_token_id])
            return
        ids = torch.tensor([[tok.cls_token_id, tok.mask_token_id, tok.sep_token_id]], device=self.device)
        mask = torch.ones_like(ids)
        hidden = self.runs.runner.hidden(ids, mask)
        self.runs.runner.top_tokens(hidden[ids == tok.mask_token_id], 1)
        self._pooled(ids, mask)

    def token_text(self, token_id: int) -> str:
        """A token as a fill-mask answer shows it; decoded on first use (decoding a whole vocabulary at
        load would hold the GIL for ~100 ms while the old version still answers requests)."""
        text = self.decoded.get(token_id)
        if text is None:
            text = self.decoded[token_id] = self.tokenizer.decode([token_id]).strip()
        return text

    @property
    def mask_token_id(self) -> int | None:
        return self.tokenizer.mask_token_id if self.kind == "masked" else None

    @property
    def pad_token_id(self) -> int:
        """What pads a batch (masked out, so any id does): the pad token, else the end of text (a GPT-2 has no pad)."""
        tok = self.tokenizer
        return next((i for i in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) if i is not None), 0)

    def encode(self, texts: list[str]) -> Encoded:
        """Token ids per text (specials in, cut to max_tokens) and each text's whole length (the tokenizer's own
        count, specials in); a text the tokenizer refuses is an InputError. A text over max_tokens is tokenised
        again with the tokenizer's truncation, so the cut is the tokenizer's (specials kept), not ours."""
        try:
            whole = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
            long = [i for i, row in enumerate(whole) if len(row) > self.max_tokens]
            cut = self.tokenizer([texts[i] for i in long], truncation=True,
                                 max_length=self.max_tokens)["input_ids"] if long else []
        except Exception as err:  # noqa: BLE001 - the tokenizer's errors differ by kind; all are the texts' fault
            raise InputError(f"a text cannot be tokenised ({type(err).__name__}: {err})"[:300]) from None
        ids = list(whole)
        for i, row in zip(long, cut, strict=True):
            ids[i] = row
        return Encoded(tuple(tuple(row) for row in ids), tuple(len(row) for row in whole))

    def check_fill_mask(self, texts: list[str], encoded: Encoded) -> None:
        """Raise InputError unless each text holds a mask token that survives truncation (WrongKind: a causal LM)."""
        if self.kind != "masked":
            raise WrongKind(f"{self.version} is a {self.kind} language model ({self.model.config.model_type}): it has "
                            "no mask token to fill; it generates text: POST /v1/completions or /v1/chat/completions")
        for text, ids in zip(texts, encoded.ids, strict=True):
            if self.mask_token not in text:
                raise InputError(f"each text must hold the mask token {self.mask_token!r}")
            if self.mask_token_id not in ids:
                raise InputError(f"the mask token lies beyond the first {self.max_tokens} tokens")

    def _tensors(self, texts: list[str] | Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), (B, T) each, padded on the CPU and moved to the model's device."""
        encoded = texts if isinstance(texts, Encoded) else self.encode(texts)
        width = max(len(row) for row in encoded.ids)
        input_ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded.ids):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _grouped(self, texts: list[str] | Encoded, run) -> list:
        """`run(input_ids, attention_mask)` over groups of rows of similar length (Encoded.length_groups),
        its per-row answers put back in the texts' order."""
        encoded = texts if isinstance(texts, Encoded) else self.encode(texts)
        answers: list = [None] * len(encoded)
        for group in encoded.length_groups():
            rows = run(*self._tensors(Encoded(tuple(encoded.ids[i] for i in group))))
            for i, answer in zip(group, rows, strict=True):
                answers[i] = answer
        return answers

    @torch.inference_mode()
    def fill_mask(self, texts: list[str] | Encoded, top_k: int) -> list[list[list[dict]]]:
        """Per text, per mask token: the top_k tokens with their probabilities."""
        return self._grouped(texts, lambda ids, mask: self._fill_mask(ids, mask, top_k))

    def _fill_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, top_k: int) -> list[list[list[dict]]]:
        runner = self.runs.runner  # one runner for the whole batch
        hidden = runner.hidden(input_ids, attention_mask)
        return fill_mask_candidates(hidden, input_ids, self.mask_token_id, runner.top_tokens, top_k, self.token_text)

    @torch.inference_mode()
    def embed(self, texts: list[str] | Encoded, normalize: bool = True) -> list[list[float]]:
        """Mean of the last hidden states over real tokens (the pooling the contrastive loss trains), L2-normalised
        unless `normalize` is false (TEI's /embed with normalize: false)."""
        return self._grouped(texts, lambda ids, mask: self._pooled(ids, mask, normalize).tolist())

    def tokenize(self, texts: list[str], special_tokens: bool = True) -> list[list[dict]]:
        """Per text, its tokens as text-embeddings-inference's /tokenize shows them: id, text (the characters it
        covers, or a special token's own text), special, start and stop (character offsets; None for a special
        token added around the text). Whole texts, never cut; `special_tokens`: [CLS]/[SEP] (or <s>, </s>) added."""
        try:
            found = self.tokenizer(texts, add_special_tokens=special_tokens, truncation=False, verbose=False,
                                   return_special_tokens_mask=True, return_offsets_mapping=self.tokenizer.is_fast)
        except Exception as err:  # noqa: BLE001 - the tokenizer's errors differ by kind; all are the texts' fault
            raise InputError(f"a text cannot be tokenised ({type(err).__name__}: {err})"[:300]) from None
        answers = []
        for i, (text, ids) in enumerate(zip(texts, found["input_ids"], strict=True)):
            offsets = found["offset_mapping"][i] if "offset_mapping" in found else [None] * len(ids)
            names = self.tokenizer.convert_ids_to_tokens(ids)
            answers.append([_token(text, *token) for token in zip(ids, names, found["special_tokens_mask"][i],
                                                                  offsets, strict=True)])
        return answers

    @torch.inference_mode()
    def predict(self, texts: list[str] | Encoded, tasks: list[str]) -> list[dict[str, dict]]:
        """Per text, each task's label and scores: one backbone pass serves every probe task."""
        self.check_tasks(tasks)
        return self._grouped(texts, lambda ids, mask: predict(self.tasks.tasks, tasks, self._pooled(ids, mask), ids,
                                                              mask))

    def _pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        hidden = self.runs.runner.hidden(input_ids, attention_mask)
        # hidden: (B, T, D) -> (B, D); pooled() is mean_pool() L2-normalised
        return pooled(hidden, attention_mask) if normalize else mean_pool(hidden, attention_mask)


def _token(text: str, token_id: int, name: str, special: int, where: tuple[int, int] | None) -> dict:
    """One token of `text` as TEI's /tokenize shows it; `where`: its character offsets (None: a slow tokenizer)."""
    if special or where is None:
        return {"id": token_id, "text": name, "special": bool(special), "start": None, "stop": None}
    return {"id": token_id, "text": text[where[0]:where[1]], "special": False, "start": where[0], "stop": where[1]}
