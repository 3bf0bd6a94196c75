"""The client's hand-written answer types (client/das_client/models.py) against the service's /openapi.json: every
field the client reads is in the schema of the answer it parses, with a JSON type it accepts, and every field the
client requires is one the server must send. (Fields the server sends that the client does not name stay in `raw`.)"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import das_client.models as client
import pytest

from das.app import build_app
from das_settings import Settings, get_settings

# client dataclass -> the schema of the answer it is built from
ANSWERS = {
    client.JobProgress: "JobProgress", client.Job: "JobOut", client.CorpusInfo: "CorpusInfo",
    client.Version: "ModelOut", client.CurrentVersion: "CurrentModel", client.Activation: "ActivatedOut",
    client.AliasChange: "AliasOut", client.TaskData: "TaskData", client.TaskModelInfo: "TaskModelOut",
    client.ServedTaskModel: "ServedTaskModel", client.FitInfo: "FitOut", client.TaskInfo: "TaskOut",
    client.TaskAnswer: "TaskAnswer", client.Prediction: "TaskPredictOut", client.Predictions: "PredictOut",
    client.Candidate: "Candidate", client.FillMask: "FillMaskOut", client.Embeddings: "EmbeddingsOut",
    client.Usage: "UsageOut",
}
JSON_TYPES = {str: {"string"}, int: {"integer"}, float: {"number", "integer"}, bool: {"boolean"}, list: {"array"},
              dict: {"object"}}


@pytest.fixture(scope="module")
def schemas(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("schema")
    app = build_app(Settings(store=str(root / "store"), work_dir=Path(root) / "work",
                             models_dir=get_settings().models_dir))
    return app.openapi()["components"]["schemas"]


def accepted(hint: Any) -> set[str]:
    """The JSON types a client field of this type takes ("any" for Any)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return {"any"}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(accepted(a) for a in typing.get_args(hint)))
    if hint is type(None):
        return {"null"}
    if dataclasses.is_dataclass(hint):
        return {"object"}
    return JSON_TYPES.get(origin or hint, {"any"})


def sent(prop: dict[str, Any]) -> set[str]:
    """The JSON types a schema property may hold."""
    if "anyOf" in prop:
        return set().union(*(sent(p) for p in prop["anyOf"]))
    if "$ref" in prop or "allOf" in prop:
        return {"object"}
    if "type" not in prop:
        return {"any"}
    return {prop["type"]} if isinstance(prop["type"], str) else set(prop["type"])


def test_every_answer_type_is_a_dataclass_the_mapping_names():
    named = {c for c in vars(client).values() if dataclasses.is_dataclass(c) and c.__module__ == client.__name__}
    assert named == set(ANSWERS), f"map these to their schema: {sorted(c.__name__ for c in named - set(ANSWERS))}"


@pytest.mark.parametrize("cls", list(ANSWERS), ids=lambda c: c.__name__)
def test_the_client_reads_only_what_the_schema_says_with_its_types(schemas, cls):
    schema = schemas[ANSWERS[cls]]
    properties, required = schema.get("properties", {}), set(schema.get("required", []))
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "raw":
            continue
        assert f.name in properties, f"{cls.__name__}.{f.name} is not in {ANSWERS[cls]}"
        mine, theirs = accepted(hints[f.name]), sent(properties[f.name])
        assert "any" in mine or "any" in theirs or theirs <= mine, \
            f"{cls.__name__}.{f.name} takes {sorted(mine)}, the server may send {sorted(theirs)}"
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert f.name in required, f"{cls.__name__}.{f.name} is required by the client, optional in the schema"
