"""Taking in a domain corpus for adaptation: every check, limit and digest before anything is stored or queued.

POST /v1/corpora and `das adapt --store` both go through `check_request` (the domain's name and the training
settings, against the service's limits and the active model) and `check_corpus` (the file: size, encoding, format,
documents), in that order, and refuse the same inputs with the same messages. Torch-free: the API imports it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from das_formats.config import (
    ConfigLimits,
    DASConfig,
    LimitError,
    check_limits,
    corpus_problem,
    model_max_length,
    ranks_problem,
    upload_config,
)
from das_formats.corpus import CorpusError, read_corpus
from das_settings import Settings
from model_store.names import InvalidName, domain_name
from model_store.store import ModelStore

log = logging.getLogger(__name__)

# which setting sets each limit of ConfigLimits (named in the refusal)
LIMIT_SETTINGS = {"max_steps": "DAS_MAX_STEPS", "max_batch_size": "DAS_MAX_TRAIN_BATCH_SIZE",
                  "max_length": "DAS_MAX_TRAIN_LENGTH", "max_tokens_per_batch": "DAS_MAX_TRAIN_TOKENS_PER_BATCH",
                  "max_importance_samples": "DAS_MAX_IMPORTANCE_SAMPLES", "model_max_length": "the active model"}


class IntakeRefused(ValueError):
    """The request cannot be taken in; the message says what to fix. `status`: 413 for a file over the size limit,
    422 for anything else."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CheckedCorpus:
    """A corpus file that passed every check: its documents, as the trainer will read them."""

    path: Path
    filename: str  # as the user named it (messages and records)
    documents: list[str]


def job_limits(settings: Settings, store: ModelStore) -> ConfigLimits:
    """What an adaptation may ask for: the DAS_MAX_* settings and the active model's positions."""
    return ConfigLimits(max_steps=settings.max_steps, max_batch_size=settings.max_train_batch_size,
                        max_length=settings.max_train_length, max_tokens_per_batch=settings.max_train_tokens_per_batch,
                        max_importance_samples=settings.max_importance_samples,
                        model_max_length=active_max_length(store))


def active_max_length(store: ModelStore) -> int | None:
    """Tokens a sequence may hold in the active version (its config.json; no torch); None if unreadable."""
    active = store.active_id()
    if active is None:
        return None
    try:
        config = json.loads((store.model_dir(active, verify=False) / "config.json").read_text("utf-8"))
    except Exception as err:  # noqa: BLE001 - the store's own errors surface when the corpus is stored
        log.warning("cannot read the config of %s (%s: %s); max_length is checked against the settings only",
                    active, type(err).__name__, err)
        return None
    return model_max_length(config) if isinstance(config, dict) else None


def check_request(domain: str, overrides: dict[str, Any], *, limits: ConfigLimits, train_procs: int) -> DASConfig:
    """The training settings of an adaptation request (an upload's defaults under `overrides`), checked: the domain's
    name, every setting's own bounds, the service's limits, and the processes it trains on."""
    try:
        domain_name(domain)
        config = upload_config(overrides)
    except (InvalidName, ValueError) as err:
        raise IntakeRefused(str(err)) from None
    try:
        check_limits(config, limits)
    except LimitError as err:
        raise IntakeRefused(f"{err} (set by {LIMIT_SETTINGS[err.limit_name]})") from None
    problem = ranks_problem(config, train_procs)
    if problem:
        raise IntakeRefused(f"{problem} (DAS_TRAIN_PROCS={train_procs})")
    return config


def check_corpus(path: Path, filename: str, size: int, config: DASConfig) -> CheckedCorpus:
    """A corpus file of `size` bytes read and checked for these settings; messages name it as `filename`."""
    if size == 0:
        raise IntakeRefused("the uploaded file is empty")
    try:
        documents = read_corpus(path)
    except CorpusError as err:
        raise IntakeRefused(str(err).replace(str(path), filename)) from None
    problem = corpus_problem(config, documents)
    if problem:
        raise IntakeRefused(problem)
    return CheckedCorpus(path, filename, documents)


def too_large(limit: int) -> str:
    """The refusal of a corpus over DAS_MAX_UPLOAD_BYTES."""
    return f"the corpus exceeds the upload limit of {limit} bytes (DAS_MAX_UPLOAD_BYTES)"
