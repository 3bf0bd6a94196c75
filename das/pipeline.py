"""Request -> engine -> store: adapt the active version on a corpus and publish the result.

The same functions serve the CLI now and the worker later. Nothing here knows HTTP.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from das_engine import DASConfig, adapt, read_corpus
from das_engine.trainer import Progress
from model_store.manifest import Manifest
from model_store.store import ModelStore, PublishRequest

from .base_model import resolve_base_model
from .settings import Settings, get_settings


def open_store(location: str | None = None, settings: Settings | None = None) -> ModelStore:
    settings = settings or get_settings()
    return ModelStore.open(location or settings.store, redis_url=settings.redis_url,
                           storage_options=settings.store_options or None)


def ensure_initialised(store: ModelStore, settings: Settings | None = None) -> Manifest:
    """An empty store gets v0001: the base model as given (a hub id is saved as safetensors first)."""
    settings = settings or get_settings()
    existing = store.ids()
    if existing:
        return store.manifest(existing[0])
    base = resolve_base_model(settings.base_model, settings.models_dir)
    if Path(base).is_dir():
        return store.init_base(Path(base), settings.base_model)
    from das_engine.loading import load_masked_lm

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_masked_lm(base, safetensors_only=False)  # saved below as safetensors
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return store.init_base(Path(tmp), settings.base_model)


def training_summary(metrics: dict) -> dict:
    """train_metrics.json without the per-step history (that stays in the version's file)."""
    return {k: v for k, v in metrics.items() if k != "history"} | {"final": metrics["history"][-1]}


def adapt_active(store: ModelStore, corpus: Path, domain: str, config: DASConfig, *, work_dir: Path,
                 device: str = "cpu", activate: bool = True, on_progress: Callable[[Progress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, request_id: str | None = None) -> Manifest | None:
    """Adapt the active version on `corpus`, publish it as a new version; None if cancelled.

    The working folder is named by parent, corpus digest and settings, so running the same
    request again resumes from its checkpoint.
    """
    documents = read_corpus(corpus)
    info = store.put_corpus(corpus, len(documents), filename=corpus.name)
    parent = store.active()
    if parent is None:
        raise RuntimeError("the store has no active version; initialise it first")
    settings_digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    work = Path(work_dir) / f"{parent.id}-{info.sha256[:16]}-{settings_digest[:12]}"
    result = adapt(store.model_dir(parent.id), documents, work, config,
                   prev_importance=store.importance_file(parent.id), domain=domain, device=device,
                   on_progress=on_progress, should_stop=should_stop)
    if result.status != "completed":
        return None
    manifest = store.publish(PublishRequest(folder=work, parent=parent.id, domain=domain, corpus=info,
                                            base_model=parent.base_model, settings=config.to_dict(),
                                            metrics=training_summary(result.metrics), request_id=request_id),
                             activate=activate)
    shutil.rmtree(work, ignore_errors=True)
    return manifest
