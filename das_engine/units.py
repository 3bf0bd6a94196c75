"""Where the DAS units live in each model family, and a container of one value per unit.

Units per transformer layer: attention heads (the head's slice of the attention output
projection's input), FFN intermediate neurons (outputs of the intermediate dense layer, before
the activation) and FFN output neurons (outputs of the FFN output dense layer).
Adding a family is one entry in FAMILIES; nothing else in the engine looks at the family.

With `protect_embeddings` an importance also holds one value per row of the word-embedding
matrix (`UnitTensors.embeddings`, [1, V], saved under the key "embeddings" beside the unit groups
of das_formats.layout.GROUPS; readers that iterate GROUPS ignore it). The word embeddings are
found by `get_input_embeddings()`, the same for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from das_formats.layout import GROUPS

EMBEDDINGS = "embeddings"  # the key of the word-embedding row importance in an importance file


@dataclass(frozen=True)
class FamilyMap:
    """Module paths: `layers` and `mlm_head` from the model, the rest from one layer."""

    layers: str
    mlm_head: str
    query: str = "attention.self.query"
    key: str = "attention.self.key"
    value: str = "attention.self.value"
    attention_output: str = "attention.output.dense"
    intermediate: str = "intermediate.dense"
    output: str = "output.dense"


FAMILIES: dict[str, FamilyMap] = {
    "bert": FamilyMap(layers="bert.encoder.layer", mlm_head="cls"),
    "roberta": FamilyMap(layers="roberta.encoder.layer", mlm_head="lm_head"),
    "xlm-roberta": FamilyMap(layers="roberta.encoder.layer", mlm_head="lm_head"),
}


@dataclass(frozen=True)
class LayerUnits:
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attention_output: nn.Linear
    intermediate: nn.Linear
    output: nn.Linear


@dataclass(frozen=True)
class ModelUnits:
    """The modules DAS touches in one model, resolved once."""

    family: str
    layers: tuple[LayerUnits, ...]
    mlm_head: nn.Module
    num_heads: int
    head_size: int
    intermediate_size: int
    hidden_size: int
    # the input word embeddings (BERT and RoBERTa tie them to the MLM decoder: one parameter)
    word_embeddings: nn.Embedding | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are now (read each time: the model may have moved since)."""
        return self.layers[0].query.weight.device

    def shapes(self) -> dict[str, tuple[int, int]]:
        n = self.num_layers
        return {"head": (n, self.num_heads), "intermediate": (n, self.intermediate_size),
                "output": (n, self.hidden_size)}

    def embeddings_shape(self) -> tuple[int, int]:
        """[1, V]: one importance per word-embedding row."""
        if self.word_embeddings is None:
            raise ValueError("these units were resolved without the model's word embeddings")
        return (1, self.word_embeddings.weight.shape[0])


def resolve_units(model: nn.Module) -> ModelUnits:
    """Find the unit-producing modules of a masked LM by its `config.model_type`."""
    family = getattr(model.config, "model_type", None)
    if family not in FAMILIES:
        raise ValueError(
            f"model family {family!r} has no DAS unit map; supported: {sorted(FAMILIES)}. "
            "Add a FamilyMap entry to das_engine.units.FAMILIES naming its layer list and MLM head."
        )
    fmap = FAMILIES[family]
    layers = tuple(
        LayerUnits(**{name: layer.get_submodule(getattr(fmap, name)) for name in LayerUnits.__annotations__})
        for layer in model.get_submodule(fmap.layers)
    )
    config = model.config
    return ModelUnits(
        family=family,
        layers=layers,
        mlm_head=model.get_submodule(fmap.mlm_head),
        num_heads=config.num_attention_heads,
        head_size=config.hidden_size // config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_size=config.hidden_size,
        word_embeddings=model.get_input_embeddings(),
    )


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
