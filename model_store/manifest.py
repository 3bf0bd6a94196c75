"""The manifest of one version: identity, lineage, provenance and the digest of every file."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

# candidate: published, never active; active: the pointer names it; retired: was active, the pointer moved on (it
# can be activated again); rejected: refused by the forgetting gate; archived: gc removed its weights
Status = Literal["candidate", "active", "retired", "rejected", "archived"]
STATUSES: tuple[Status, ...] = ("candidate", "active", "retired", "rejected", "archived")
STORED_STATUSES = ("candidate", "retired", "rejected", "archived")  # 'active' is derived from the pointer


@dataclass
class CorpusInfo:
    sha256: str
    size: int
    documents: int
    filename: str = ""


@dataclass
class Manifest:
    id: str
    parent: str | None
    created: str
    status: Status
    domain: str | None
    corpus: CorpusInfo | None
    base_model: str
    files: dict[str, str]  # file name -> sha256
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    package_version: str = ""
    request_id: str | None = None  # the job that published it: a job never publishes twice

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        data = json.loads(text)
        corpus = data.pop("corpus", None)
        return cls(corpus=CorpusInfo(**corpus) if corpus else None, **data)

    def with_status(self, status: Status) -> Manifest:
        return dataclasses.replace(self, status=status)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
