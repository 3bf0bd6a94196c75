"""End tasks in the store: definitions, immutable task models tied to versions, gc and damage per item."""

import json
from pathlib import Path

import pytest

from model_store import maintenance
from model_store.store import ModelStore, PublishRequest, StoreError
from model_store.tasks import TaskData, TaskDefinition, TaskExists, TaskModel, TaskNotFound, TaskStore


@pytest.fixture
def store(tmp_path, roberta_dir) -> ModelStore:
    s = ModelStore.open(tmp_path / "store")
    s.init_base(roberta_dir, "tiny-roberta")
    return s


def _data(store: ModelStore, tmp_path: Path, rows: list[tuple[str, str]], name: str) -> TaskData:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    info = store.blobs.put_corpus(path, len(rows), name)
    return TaskData(info.sha256, len(rows), info.filename)


def _definition(store, tmp_path, name="sentiment", **kw) -> TaskDefinition:
    train = _data(store, tmp_path, [("good", "pos"), ("fine", "pos"), ("bad", "neg"), ("awful", "neg")], "t.jsonl")
    fields = dict(name=name, kind="probe", labels=["neg", "pos"], train=train, eval=None, settings={"seed": 0})
    return TaskDefinition(**{**fields, **kw})


def _task_model(tmp_path: Path, definition: TaskDefinition, version: str) -> tuple[Path, TaskModel]:
    folder = tmp_path / f"fit-{version}-{definition.name}"
    folder.mkdir()
    (folder / "probe.json").write_text('{"labels": ["neg", "pos"]}')
    (folder / "probe.safetensors").write_bytes(b"weights of " + version.encode())
    return folder, TaskModel(task=definition.name, version=version, generation=definition.generation,
                             kind="probe", labels=definition.labels, files={}, scores={"macro_f1": 80.0})


def test_a_definition_round_trips_and_a_taken_name_needs_replace(store, tmp_path):
    tasks = TaskStore(store)
    stored = tasks.put_definition(_definition(store, tmp_path))
    assert tasks.definition("sentiment") == stored and stored.created
    with pytest.raises(TaskExists, match="replace"):
        tasks.put_definition(_definition(store, tmp_path))
    changed = tasks.put_definition(_definition(store, tmp_path, settings={"seed": 1}), replace=True)
    assert changed.generation != stored.generation  # a new definition: old models never serve it
    assert [d.name for d in tasks.definitions()] == ["sentiment"]


def test_a_definition_needs_its_data_in_the_store(store, tmp_path):
    definition = _definition(store, tmp_path)
    missing = TaskData("0" * 64, 4)
    with pytest.raises(StoreError, match="not in the store"):
        TaskStore(store).put_definition(TaskDefinition(**{**definition.__dict__, "train": missing}))


def test_task_models_are_immutable_and_tied_to_their_version(store, tmp_path):
    tasks = TaskStore(store)
    definition = tasks.put_definition(_definition(store, tmp_path))
    folder, record = _task_model(tmp_path, definition, "v0001")
    published = tasks.publish_model(folder, record)
    assert set(published.files) == {"probe.json", "probe.safetensors"}
    assert tasks.model("v0001", "sentiment", definition.generation) == published
    (folder / "probe.safetensors").write_bytes(b"other")  # a second publish of the same fit changes nothing
    assert tasks.publish_model(folder, record) == published
    assert (tasks.model_dir(published) / "probe.safetensors").read_bytes() == b"weights of v0001"
    assert tasks.models_for("v0001") == {"sentiment": published}
    assert tasks.history(definition) == [published]


def test_a_task_model_holds_safetensors_and_json_only(store, tmp_path):
    tasks = TaskStore(store)
    definition = tasks.put_definition(_definition(store, tmp_path))
    folder, record = _task_model(tmp_path, definition, "v0001")
    (folder / "head.pt").write_bytes(b"pickle")
    with pytest.raises(StoreError, match="head.pt"):
        tasks.publish_model(folder, record)
    assert tasks.model("v0001", "sentiment", definition.generation) is None


def test_a_corrupted_task_model_file_is_refused_when_served(store, tmp_path):
    tasks = TaskStore(store)
    definition = tasks.put_definition(_definition(store, tmp_path))
    published = tasks.publish_model(*_task_model(tmp_path, definition, "v0001"))
    (tasks.model_dir(published) / "probe.safetensors").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="corrupted"):
        tasks.model_dir(published)


def test_gc_removes_task_models_with_their_version(store, tmp_path, roberta_dir):
    tasks = TaskStore(store)
    definition = tasks.put_definition(_definition(store, tmp_path))
    v2 = store.publish(PublishRequest(roberta_dir, "v0001", "d2", "tiny-roberta"))
    for version in ("v0001", v2.id):
        tasks.publish_model(*_task_model(tmp_path, definition, version))
    assert maintenance.gc(store, keep=1) == ["v0001"]
    assert tasks.model("v0001", "sentiment", definition.generation) is None
    assert tasks.model(v2.id, "sentiment", definition.generation) is not None


def test_a_damaged_definition_affects_only_its_task(store, tmp_path):
    tasks = TaskStore(store)
    tasks.put_definition(_definition(store, tmp_path, name="good"))
    tasks.put_definition(_definition(store, tmp_path, name="broken"))
    (Path(store.backend.local_path("tasks")) / "broken.json").write_text("{not json")
    assert [d.name for d in tasks.definitions()] == ["good"]
    assert any("broken" in problem for problem in tasks.damaged().values())
    with pytest.raises(StoreError, match="replace=true"):
        tasks.definition("broken")
    tasks.put_definition(_definition(store, tmp_path, name="broken"), replace=True)  # the stated fix works
    assert [d.name for d in tasks.definitions()] == ["broken", "good"]


def test_delete_forgets_the_task_and_its_models(store, tmp_path):
    tasks = TaskStore(store)
    definition = tasks.put_definition(_definition(store, tmp_path))
    tasks.publish_model(*_task_model(tmp_path, definition, "v0001"))
    tasks.delete("sentiment")
    with pytest.raises(TaskNotFound):
        tasks.definition("sentiment")
    assert tasks.model("v0001", "sentiment", definition.generation) is None
    with pytest.raises(TaskNotFound):
        tasks.delete("sentiment")


def test_task_scores_show_in_the_version_manifest(store):
    store.record_task_score("v0001", "sentiment", {"macro_f1": 81.5})
    store.record_task_score("v0001", "topic", {"macro_f1": 90.0})
    assert store.manifest("v0001").evaluation["tasks"] == {"sentiment": {"macro_f1": 81.5},
                                                           "topic": {"macro_f1": 90.0}}
    assert store.manifest("v0001").status == "active"
