"""Where the DAS units live in each model family, and a container of one value per unit.

Units per transformer layer, three groups:
- attention heads: one per query head, the head's slice of the attention output projection's input;
- FFN intermediate neurons: outputs of the intermediate dense layer, before the activation (BERT,
  RoBERTa, GPT-2); in a gated FFN (Llama, Qwen2, Gemma, Mistral: down(act(gate(x)) * up(x))) the
  neuron is act(gate_j) * up_j, scaled at the input of the down projection;
- FFN output neurons: outputs of the FFN output (down) projection.
Adding a family is one entry in FAMILIES; nothing else in the engine looks at the family. The
engine reads a unit's parameters from `LayerUnits.owned` (which rows or columns of which weight
belong to which unit), never from module names or from nn.Linear's orientation: GPT-2's Conv1D
layers hold (in, out) weights, the transpose of nn.Linear's (out, in).

Grouped-query attention (`num_key_value_heads` < `num_attention_heads`): the units are the query
heads; each key/value head is shared by a group of query heads, so its rows belong to the whole
group (a soft-mask protects them by the group's largest importance).

With `protect_embeddings` an importance also holds one value per row of the word-embedding
matrix (`UnitTensors.embeddings`, [1, V], saved under the key "embeddings" beside the unit groups
of das_formats.layout.GROUPS; readers that iterate GROUPS ignore it). The word embeddings are
found by `get_input_embeddings()`, the same for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from das_formats.layout import GROUPS
from das_formats.model_kind import config_kind

EMBEDDINGS = "embeddings"  # the key of the word-embedding row importance in an importance file

LMKind = Literal["masked", "causal"]  # what a model predicts: masked tokens (MLM) or the next token


@dataclass(frozen=True)
class FamilyMap:
    """Module paths: `layers` and `lm_head` from the model, the rest from one layer.

    `query`, `key` and `value` name one module each, or the same fused module (GPT-2's c_attn: q, k
    and v side by side in its outputs). `gate` names a gated FFN's gate projection: the FFN neurons
    are then scaled at the input of `output` (the down projection). `conv1d`: the weights are
    transformers' Conv1D, (in, out).
    """

    layers: str
    lm_head: str
    kind: LMKind = "masked"
    query: str = "attention.self.query"
    key: str = "attention.self.key"
    value: str = "attention.self.value"
    attention_output: str = "attention.output.dense"
    intermediate: str = "intermediate.dense"
    output: str = "output.dense"
    gate: str | None = None
    conv1d: bool = False


_GATED_DECODER = FamilyMap(layers="model.layers", lm_head="lm_head", kind="causal", query="self_attn.q_proj",
                           key="self_attn.k_proj", value="self_attn.v_proj", attention_output="self_attn.o_proj",
                           intermediate="mlp.up_proj", output="mlp.down_proj", gate="mlp.gate_proj")

FAMILIES: dict[str, FamilyMap] = {
    "bert": FamilyMap(layers="bert.encoder.layer", lm_head="cls"),
    "roberta": FamilyMap(layers="roberta.encoder.layer", lm_head="lm_head"),
    "xlm-roberta": FamilyMap(layers="roberta.encoder.layer", lm_head="lm_head"),
    # decoder-only causal LMs: Llama-style blocks (SmolLM2 is "llama")
    **{family: _GATED_DECODER for family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")},
    "gpt2": FamilyMap(layers="transformer.h", lm_head="lm_head", kind="causal", query="attn.c_attn",
                      key="attn.c_attn", value="attn.c_attn", attention_output="attn.c_proj", intermediate="mlp.c_fc",
                      output="mlp.c_proj", conv1d=True),
}


@dataclass(frozen=True)
class Owned:
    """The entries of one parameter that belong to units of one group: along `dim`, entry i belongs to the units
    listed in row i of `units` ((n, 1), or (n, k) for an entry k units share: a key/value head under grouped-query
    attention belongs to its k query heads)."""

    param: nn.Parameter
    dim: int
    units: torch.Tensor  # (param.shape[dim], k) long

    def keep(self, importance: torch.Tensor) -> torch.Tensor:
        """1 - I per entry (1 - the largest I of the units sharing it), shaped to broadcast over the parameter."""
        keep = 1.0 - importance[self.units.to(importance.device)].amax(-1)  # (n,)
        shape = [1] * self.param.dim()
        shape[self.dim] = -1
        return keep.reshape(shape)


@dataclass(frozen=True)
class LayerUnits:
    """One layer's unit-producing modules (the family's, whatever their type), and the parameters each group owns."""

    block: nn.Module  # the whole layer (the importance pass's added dropout acts on its output)
    query: nn.Module
    key: nn.Module
    value: nn.Module
    attention_output: nn.Module
    intermediate: nn.Module  # a gated FFN's up projection (its neurons are scaled at the input of `output`)
    output: nn.Module
    owned: dict[str, tuple[Owned, ...]]  # group -> the parameter slices its units own, in a fixed order


@dataclass(frozen=True)
class ModelUnits:
    """The modules DAS touches in one model, resolved once."""

    family: str
    kind: LMKind
    layers: tuple[LayerUnits, ...]
    lm_head: nn.Module  # the MLM head (masked) or the next-token head (causal)
    num_heads: int  # query heads
    num_key_value_heads: int
    head_size: int
    intermediate_size: int
    hidden_size: int
    intermediate_at_output_input: bool = False  # a gated FFN: FFN neurons scaled at the down projection's input
    logit_softcap: float | None = None  # Gemma 2: logits = cap * tanh(logits / cap), as its own forward does
    # the input word embeddings (BERT and RoBERTa tie them to the MLM decoder: one parameter)
    word_embeddings: nn.Embedding | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def mlm_head(self) -> nn.Module:
        """The MLM head of a masked LM; a causal LM has none (its `lm_head` predicts the next token)."""
        if self.kind != "masked":
            raise ValueError(f"this {self.family} model is a causal LM: it has no MLM head (fill-mask and the MLM loss "
                             "need a masked LM)")
        return self.lm_head

    @property
    def device(self) -> torch.device:
        """Where the model's weights are now (read each time: the model may have moved since)."""
        return self.layers[0].owned["head"][0].param.device

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head's logits for hidden states (..., D) -> (..., V)."""
        logits = self.lm_head(hidden)
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def shapes(self) -> dict[str, tuple[int, int]]:
        n = self.num_layers
        return {"head": (n, self.num_heads), "intermediate": (n, self.intermediate_size),
                "output": (n, self.hidden_size)}

    def embeddings_shape(self) -> tuple[int, int]:
        """[1, V]: one importance per word-embedding row."""
        if self.word_embeddings is None:
            raise ValueError("these units were resolved without the model's word embeddings")
        return (1, self.word_embeddings.weight.shape[0])


def family_kind(config: Any) -> LMKind:
    """Whether a model config is a masked or a causal LM: its family's, for a family FAMILIES maps; else by the head
    its `architectures` name (...ForCausalLM / ...LMHeadModel: causal); else masked."""
    family = FAMILIES.get(getattr(config, "model_type", None))
    if family is not None:
        return family.kind
    return config_kind({"architectures": getattr(config, "architectures", None)})


def resolve_units(model: nn.Module) -> ModelUnits:
    """Find the unit-producing modules of a masked or causal LM by its `config.model_type`."""
    family = getattr(model.config, "model_type", None)
    if family not in FAMILIES:
        raise ValueError(
            f"model family {family!r} has no DAS unit map; supported: {sorted(FAMILIES)}. "
            "Add a FamilyMap entry to das_engine.units.FAMILIES naming its layer list, its LM head and the modules "
            "of one layer."
        )
    fmap = FAMILIES[family]
    config = model.config
    num_heads = config.num_attention_heads
    blocks = list(model.get_submodule(fmap.layers))
    layers = tuple(_layer_units(block, fmap, num_heads) for block in blocks)
    first = layers[0]
    head_size = _features(first.attention_output, fmap.conv1d)[0] // num_heads
    softcap = getattr(config, "final_logit_softcapping", None)
    return ModelUnits(
        family=family,
        kind=fmap.kind,
        layers=layers,
        lm_head=model.get_submodule(fmap.lm_head),
        num_heads=num_heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or num_heads,
        head_size=head_size,
        intermediate_size=_features(first.output, fmap.conv1d)[0],
        hidden_size=_features(first.output, fmap.conv1d)[1],
        intermediate_at_output_input=fmap.gate is not None,
        logit_softcap=float(softcap) if softcap else None,
        word_embeddings=model.get_input_embeddings(),
    )


def _features(module: nn.Module, conv1d: bool) -> tuple[int, int]:
    """(in, out) features of a Linear ((out, in) weight) or a Conv1D ((in, out) weight). A Linear as torch's dynamic
    int8 quantisation rewrote it (DAS_SERVE_INT8: its `weight` is a method) says them itself."""
    if not conv1d and isinstance(getattr(module, "in_features", None), int):
        return module.in_features, module.out_features
    rows, columns = module.weight.shape
    return (rows, columns) if conv1d else (columns, rows)


def _layer_units(block: nn.Module, fmap: FamilyMap, num_heads: int) -> LayerUnits:
    """One layer's modules, and which entries of which parameter each unit owns (the spec's soft-masked slices)."""
    modules = {name: block.get_submodule(getattr(fmap, name))
               for name in ("query", "key", "value", "attention_output", "intermediate", "output")}
    out_dim, in_dim = (1, 0) if fmap.conv1d else (0, 1)  # the weight's axis of output features, of input features
    head_size = _features(modules["attention_output"], fmap.conv1d)[0] // num_heads

    def outputs(module: nn.Module, units: torch.Tensor) -> list[Owned]:
        """The rows (Linear) or columns (Conv1D) producing each output feature, and the bias entries."""
        owned = [Owned(module.weight, out_dim, units)]
        if getattr(module, "bias", None) is not None:
            owned.append(Owned(module.bias, 0, units))
        return owned

    def per_head(features: int) -> torch.Tensor:
        """Output feature f of q (or of k, v) belongs to head f // d; under grouped-query attention, k/v head g serves
        query heads g * r .. (g + 1) * r - 1 (r = query heads per key/value head; repeat_kv's order)."""
        heads = torch.arange(features) // head_size  # the q, k or v head of each feature
        share = num_heads // (features // head_size)  # query heads per head of this projection
        return (heads[:, None] * share + torch.arange(share)[None, :]).long()  # (features, share)

    if fmap.query == fmap.key == fmap.value:  # fused q, k, v (GPT-2's c_attn): three equal blocks of features
        width = _features(modules["query"], fmap.conv1d)[1] // 3
        head = outputs(modules["query"], torch.cat([per_head(width)] * 3))
    else:
        head = [o for name in ("query", "key", "value")
                for o in outputs(modules[name], per_head(_features(modules[name], fmap.conv1d)[1]))]
    attention_in = _features(modules["attention_output"], fmap.conv1d)[0]
    head.append(Owned(modules["attention_output"].weight, in_dim, (torch.arange(attention_in) // head_size)[:, None]))
    intermediate_size = _features(modules["output"], fmap.conv1d)[0]
    neurons = torch.arange(intermediate_size)[:, None]
    intermediate = outputs(modules["intermediate"], neurons)
    if fmap.gate is not None:  # the gated FFN's neuron j is act(gate_j) * up_j: both rows are its
        intermediate = outputs(block.get_submodule(fmap.gate), neurons) + intermediate
    output = outputs(modules["output"], torch.arange(_features(modules["output"], fmap.conv1d)[1])[:, None])
    return LayerUnits(block=block, **modules,
                      owned={"head": tuple(head), "intermediate": tuple(intermediate), "output": tuple(output)})


@dataclass
class UnitTensors:
    """One float per unit: head [L, H], intermediate [L, I], output [L, D] (or with a leading batch dim).

    `embeddings` ([1, V], one float per word-embedding row) is present only in importances made
    with `protect_embeddings` (or handed on from one); `items()` lists it after the unit groups
    when present. Gates never carry it (`units_only()`).
    """

    head: torch.Tensor
    intermediate: torch.Tensor
    output: torch.Tensor
    embeddings: torch.Tensor | None = None

    @classmethod
    def full(cls, units: ModelUnits, value: float, requires_grad: bool = False,
             device: torch.device | str | None = None) -> UnitTensors:
        """float32 tensors of `value`, on `device` (the CPU if None; unit scales pass the model's device)."""
        return cls(**{g: torch.full(s, float(value), requires_grad=requires_grad, dtype=torch.float32,
                                    device=device or "cpu")
                      for g, s in units.shapes().items()})

    def items(self) -> list[tuple[str, torch.Tensor]]:
        found = [(g, getattr(self, g)) for g in GROUPS]
        return found if self.embeddings is None else [*found, (EMBEDDINGS, self.embeddings)]

    def units_only(self) -> UnitTensors:
        """The unit groups alone (no copy): what unit scales and per-unit masks read."""
        return UnitTensors(self.head, self.intermediate, self.output)

    def with_embeddings(self, embeddings: torch.Tensor | None) -> UnitTensors:
        return UnitTensors(self.head, self.intermediate, self.output, embeddings)

    def map(self, fn) -> UnitTensors:
        return UnitTensors(**{g: fn(t) for g, t in self.items()})

    def to(self, device: torch.device | str) -> UnitTensors:
        """The same values on `device` (no copy where they are there already)."""
        return self.map(lambda t: t.to(device))

    def maximum(self, other: UnitTensors) -> UnitTensors:
        """Element-wise maximum (EMax). Embedding importance on one side only is kept as it is."""
        result = UnitTensors(**{g: torch.maximum(getattr(self, g), getattr(other, g)) for g in GROUPS})
        present = [t for t in (self.embeddings, other.embeddings) if t is not None]
        if present:
            result.embeddings = torch.maximum(*present) if len(present) == 2 else present[0].clone()
        return result

    def equals(self, other: UnitTensors) -> bool:
        if (self.embeddings is None) != (other.embeddings is None):
            return False
        return all(torch.equal(t, getattr(other, g)) for g, t in self.items())

    def check_shapes(self, units: ModelUnits) -> None:
        shapes = units.shapes()
        if self.embeddings is not None:
            shapes[EMBEDDINGS] = units.embeddings_shape()
        for g, shape in shapes.items():
            if tuple(getattr(self, g).shape) != shape:
                raise ValueError(f"importance '{g}' has shape {tuple(getattr(self, g).shape)}, "
                                 f"the model needs {shape}")

    def save(self, path: str | Path) -> None:
        save_file({g: t.detach().float().contiguous().cpu() for g, t in self.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> UnitTensors:
        tensors = load_file(str(path))
        missing = [g for g in GROUPS if g not in tensors]
        if missing:
            raise ValueError(f"{path} is not an importance file: it lacks {missing}")
        embeddings = tensors[EMBEDDINGS].float() if EMBEDDINGS in tensors else None
        return cls(**{g: tensors[g].float() for g in GROUPS}, embeddings=embeddings)
