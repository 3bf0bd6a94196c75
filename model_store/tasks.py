"""End tasks in the store: the registry of task definitions, and task models tied to backbone versions.

    tasks/NAME.json                         the definition (labels, kind, settings, data digests)
    tasks/NAME.problems.json                what went wrong with it lately (a gate that could not score it, ...)
    corpora/SHA256                          its train and eval JSONL, content-addressed like corpora
    task_models/VERSION/NAME/GEN/model.json a task model fitted on backbone VERSION, written last
    task_models/VERSION/NAME/GEN/*          its files (safetensors and JSON only)

GEN is the definition's generation (a digest of what defines it), so a task registered again under
the same name (replace) never meets a model of the old definition. Task models are immutable: a
fit that finds one already published returns it. `ModelStore.gc` removes them with their version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from das_formats.fingerprint import sha256_file
from das_formats.layout import PICKLE_SUFFIXES, TASK_MODELS

from .manifest import now_iso
from .names import InvalidName, file_name, version_id
from .store import DAMAGED, Finding, ModelStore, StoreError

TaskKind = Literal["probe", "finetune"]
TASK_KINDS: tuple[TaskKind, ...] = ("probe", "finetune")
TASK_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
RECORD = "model.json"
PROBLEMS = ".problems.json"  # tasks/NAME.problems.json: NAME holds no '.', so no definition has this name
KEPT_PROBLEMS = 10


class TaskNotFound(StoreError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class TaskExists(StoreError):
    """The name is taken (register again with replace to overwrite it)."""


def task_name(value: str) -> str:
    if not isinstance(value, str) or not TASK_RE.fullmatch(value):
        raise InvalidName(f"invalid task name {value!r}: use 1-64 lowercase letters, digits, '_' or '-', "
                          "starting with a letter or digit")
    return value


@dataclass
class TaskData:
    sha256: str
    examples: int
    filename: str = ""


@dataclass
class TaskDefinition:
    name: str
    kind: TaskKind
    labels: list[str]
    train: TaskData
    eval: TaskData | None
    settings: dict[str, Any]
    created: str = ""
    job_id: str | None = None  # the job that fits it on the active version

    @property
    def generation(self) -> str:
        """What defines the task (not when): a model fitted for one generation never serves another."""
        key = {"kind": self.kind, "labels": self.labels, "train": self.train.sha256,
               "eval": self.eval.sha256 if self.eval else None, "settings": self.settings}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskDefinition:
        data = json.loads(text)
        data["train"] = TaskData(**data["train"])
        data["eval"] = TaskData(**data["eval"]) if data.get("eval") else None
        return cls(**data)


@dataclass
class TaskModel:
    """A task model fitted on one backbone version; `scores` are on the task's eval set (if it has one)."""

    task: str
    version: str  # the backbone version it was fitted on
    generation: str
    kind: TaskKind
    labels: list[str]
    files: dict[str, str]  # file name -> sha256
    scores: dict[str, Any] = field(default_factory=dict)  # macro_f1, accuracy, n
    fit_seconds: float = 0.0
    created: str = ""

    @property
    def key(self) -> str:
        return f"{TASK_MODELS}/{self.version}/{self.task}/{self.generation}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskModel:
        return cls(**json.loads(text))


class TaskStore:
    """The task side of a ModelStore: same backend, same writer lock."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.backend = store.backend

    # ------------------------------------------------------------ definitions
    def scan(self) -> tuple[list[TaskDefinition], dict[str, str]]:
        """Every registered task, read once: the readable definitions by name, and name -> why for those whose
        definition cannot be read."""
        found, problems = [], {}
        for name in self._names():
            try:
                found.append(self.definition(name))
            except TaskNotFound:  # deleted meanwhile
                continue
            except StoreError as err:
                problems[name] = str(err)
        return found, problems

    def definitions(self) -> list[TaskDefinition]:
        """Every readable definition, by name (an unreadable one is skipped: see `damaged`)."""
        return self.scan()[0]

    def damaged(self) -> dict[str, str]:
        """Registered tasks whose definition cannot be read: name -> why."""
        return self.scan()[1]

    def exists(self, name: str) -> bool:
        """A task of this name is registered (readable or not)."""
        return self.backend.exists(_key(task_name(name)))

    def definition(self, name: str) -> TaskDefinition:
        task_name(name)
        try:
            raw = self.backend.read_bytes(_key(name))
        except FileNotFoundError:
            raise TaskNotFound(f"no task {name!r}; see GET /v1/tasks for the registered ones") from None
        try:
            definition = TaskDefinition.from_json(raw)
            if definition.name != name:
                raise ValueError(f"it describes {definition.name!r}")
        except (ValueError, TypeError, KeyError) as err:
            raise StoreError(f"tasks/{name}.json is damaged ({type(err).__name__}: {err}); "
                             f"register the task again with replace=true, or delete it") from None
        return definition

    def put_definition(self, definition: TaskDefinition, replace: bool = False) -> TaskDefinition:
        """Register a task (its data must already be in the store); TaskExists unless `replace`."""
        task_name(definition.name)
        for data in (definition.train, definition.eval):
            if data is not None and not self.store.blobs.has(data.sha256):
                raise StoreError(f"the data {data.sha256} of task {definition.name!r} is not in the store")
        with self.store.lock.hold():
            if not replace and self.exists(definition.name):
                raise TaskExists(f"a task named {definition.name!r} exists; register with replace=true to "
                                 "overwrite it, or pick another name")
            stored = dataclasses.replace(definition, created=definition.created or now_iso())
            self.backend.write_atomic(_key(definition.name), stored.to_json().encode())
            return stored

    def delete(self, name: str) -> None:
        """Forget a task and every model fitted for it (its data stays, content-addressed)."""
        task_name(name)
        with self.store.lock.hold():
            if not self.exists(name):
                raise TaskNotFound(f"no task {name!r}")
            self.backend.delete(_key(name))
            if self.backend.exists(f"tasks/{name}{PROBLEMS}"):
                self.backend.delete(f"tasks/{name}{PROBLEMS}")
            for version in self.backend.list_dir(TASK_MODELS):
                self.backend.delete_prefix(f"{TASK_MODELS}/{version}/{name}")

    def note_problem(self, definition: TaskDefinition, version: str | None, what: str) -> None:
        """Record that something went wrong with this registration of the task (the newest KEPT_PROBLEMS stay):
        what one task's data or model did is said on the task, while the rest of the service goes on."""
        key = f"tasks/{task_name(definition.name)}{PROBLEMS}"
        with self.store.lock.hold():
            kept = self._read_problems(key)
            kept.append({"generation": definition.generation, "version": version, "problem": what[:2000],
                         "at": now_iso()})
            self.backend.write_atomic(key, json.dumps(kept[-KEPT_PROBLEMS:], indent=2).encode())

    def problems(self, definition: TaskDefinition) -> list[dict[str, Any]]:
        """The recorded problems of this registration (generation) of the task, oldest first."""
        found = self._read_problems(f"tasks/{task_name(definition.name)}{PROBLEMS}")
        return [p for p in found if p.get("generation") == definition.generation]

    def _read_problems(self, key: str) -> list[dict[str, Any]]:
        try:
            found = json.loads(self.backend.read_bytes(key))
        except FileNotFoundError:
            return []
        except ValueError:  # a damaged notes file is only notes: start again
            return []
        return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []

    def put_task_data(self, path: Path, examples: int, filename: str = "") -> TaskData:
        """Store a task's train or eval JSONL (checked before), content-addressed beside the corpora."""
        return TaskData(self.store.blobs.put(path), examples, Path(filename).name)

    def data_path(self, data: TaskData) -> Path:
        return self.store.blobs.path(data.sha256)

    # ------------------------------------------------------------ task models
    def publish_model(self, folder: Path, model: TaskModel) -> TaskModel:
        """Publish a fitted task model (safetensors and JSON only); its record is written last."""
        version_id(model.version)
        task_name(model.task)
        existing = self.sound_model(model.version, model.task, model.generation)
        if existing is not None:  # a damaged one is replaced by this one
            return existing
        files = {}
        for path in sorted(Path(folder).iterdir()):
            if path.is_dir():
                continue
            if path.suffix in PICKLE_SUFFIXES or path.suffix not in (".safetensors", ".json", ".txt"):
                raise StoreError(f"{path.name}: a task model holds safetensors and JSON files only")
            if path.name == RECORD:
                raise StoreError(f"{folder} already holds a {RECORD}")
            files[file_name(path.name)] = sha256_file(path)
        record = dataclasses.replace(model, files=files, created=model.created or now_iso())
        with self.store.lock.hold():
            self.backend.delete_prefix(record.key)  # what a damaged model of this key left behind
            for name in files:
                self.backend.put_file(Path(folder) / name, f"{record.key}/{name}")
            self.backend.write_atomic(f"{record.key}/{RECORD}", record.to_json().encode())
        return record

    def model(self, version: str, task: str, generation: str) -> TaskModel | None:
        """The task model of one generation fitted on `version`, or None (also when its record is damaged)."""
        key = f"{TASK_MODELS}/{version_id(version)}/{task_name(task)}/{generation}/{RECORD}"
        try:
            return TaskModel.from_json(self.backend.read_bytes(key))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as err:
            raise StoreError(f"{key} is damaged ({err}); fit the task again (it will be republished)") from err

    def models_for(self, version: str, definitions: list[TaskDefinition] | None = None) -> dict[str, TaskModel]:
        """The current generation's model of every task that has one on `version`."""
        found = {}
        for definition in self.definitions() if definitions is None else definitions:
            try:
                model = self.model(version, definition.name, definition.generation)
            except StoreError:
                continue
            if model is not None:
                found[definition.name] = model
        return found

    def latest_model(self, definition: TaskDefinition, versions: list[str]) -> TaskModel | None:
        """The newest model of this generation on any of `versions` (oldest first): a finetune task
        answers from the backbone it was tuned on until it is tuned on the new one."""
        for version in reversed(versions):
            model = self.model(version, definition.name, definition.generation)
            if model is not None:
                return model
        return None

    def history(self, definition: TaskDefinition) -> list[TaskModel]:
        """Its models of this generation on every version that has one, oldest first."""
        found = []
        for version in self.store.ids():
            try:
                model = self.model(version, definition.name, definition.generation)
            except StoreError:
                continue
            if model is not None:
                found.append(model)
        return found

    def sound_model(self, version: str, task: str, generation: str) -> TaskModel | None:
        """The model of this generation on `version` if its record and files are sound; a damaged one counts as
        none, so that the next fit replaces it."""
        try:
            model = self.model(version, task, generation)
        except StoreError:
            return None
        if model is None or self.model_problem(model) is not None:
            return None
        return model

    def model_problem(self, model: TaskModel) -> str | None:
        """Why a published task model cannot serve (a file missing or not matching its digest); None if sound."""
        for name, expected in model.files.items():
            key = f"{model.key}/{name}"
            local = self.backend.local_path(key)
            if local is not None:
                if not local.is_file() or sha256_file(local) != expected:
                    return f"{key} is missing or corrupted"
            elif not self.backend.exists(key):
                return f"{key} is missing"
        return None

    def model_dir(self, model: TaskModel) -> Path:
        """A local folder with the task model's files, each checked against its digest."""
        local = self.backend.local_path(model.key)
        if local is not None:
            for name, expected in model.files.items():
                if not (local / name).is_file() or sha256_file(local / name) != expected:
                    raise StoreError(f"{model.key}/{name} is missing or corrupted; fit the task again")
            return local
        target = self.store.cache.root() / model.key
        if not target.is_dir():
            with tempfile.TemporaryDirectory(dir=self.store.cache.root()) as tmp:
                for name, expected in model.files.items():
                    self.store.cache.fetch_verified(f"{model.key}/{name}", expected, Path(tmp) / "m" / name)
                target.parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / "m").rename(target)
        return target

    # ------------------------------------------------------------ repair
    def repair(self, dry_run: bool = False) -> list[Finding]:
        """Set aside (move to damaged/) every task definition that cannot be read and every task model whose
        record or files are damaged; nothing healthy is touched. A task set aside is no longer registered; a
        model set aside is fitted again by the next fit of its task."""
        with nullcontext() if dry_run else self.store.lock.hold():
            found = [self._set_aside(_key(name), f"task {name}", why, dry_run)
                     for name, why in sorted(self.damaged().items())]
            for key, why in self._damaged_models():
                found.append(self._set_aside(key, f"task model {key}", why, dry_run))
            return found

    def _damaged_models(self) -> list[tuple[str, str]]:
        """(key, why) of every published task model that cannot serve."""
        found = []
        for version in sorted(self.backend.list_dir(TASK_MODELS)):
            for task in sorted(self.backend.list_dir(f"{TASK_MODELS}/{version}")):
                for generation in sorted(self.backend.list_dir(f"{TASK_MODELS}/{version}/{task}")):
                    key = f"{TASK_MODELS}/{version}/{task}/{generation}"
                    if generation.startswith(".") or not self.backend.exists(f"{key}/{RECORD}"):
                        continue  # a publication in progress (its record is written last)
                    try:
                        problem = self.model_problem(TaskModel.from_json(self.backend.read_bytes(f"{key}/{RECORD}")))
                    except (ValueError, TypeError) as err:
                        problem = f"{RECORD} cannot be read ({type(err).__name__}: {err})"
                    if problem is not None:
                        found.append((key, problem))
        return found

    def _set_aside(self, key: str, item: str, why: str, dry_run: bool) -> Finding:
        path = self.backend.local_path(key)
        if path is None:  # object storage has no rename
            return Finding(item, why, f"by hand: delete {key} (the task, or its model, is then fitted anew)", False)
        target = f"{DAMAGED}/{key}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        if not dry_run:
            self.backend.local_path(target).parent.mkdir(parents=True, exist_ok=True)
            path.rename(self.backend.local_path(target))
        return Finding(item, why, f"move it to {target}", not dry_run)

    def _names(self) -> list[str]:
        return sorted(n[: -len(".json")] for n in self.backend.list_dir("tasks")
                      if n.endswith(".json") and TASK_RE.fullmatch(n[: -len(".json")]))


def _key(name: str) -> str:
    return f"tasks/{name}.json"
