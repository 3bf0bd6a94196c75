"""docs/settings.md, written from `Settings` itself: every `DAS_` variable with its type, default, bounds and what it
does. `python -m das_settings.reference > docs/settings.md` writes it; tests/test_generated_docs.py fails when
the file and the code differ."""

from __future__ import annotations

import json
import typing
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen

from . import Settings

HEADER = """# Settings

Every setting is an environment variable with the prefix `DAS_` (or a line of `.env`), read once into
`das_settings.Settings`. This file is written from that class: `python -m das_settings.reference > docs/settings.md`
(`tests/test_generated_docs.py` fails when the two differ). Values out of their bounds are refused at start.

| variable | type | default | bounds | what it does |
|---|---|---|---|---|
"""


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    return text or str(annotation).replace("typing.", "").replace("pathlib.", "")


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        for kind, attribute, sign in ((Ge, "ge", ">="), (Gt, "gt", ">"), (Le, "le", "<="), (Lt, "lt", "<")):
            if isinstance(item, kind):
                parts.append(f"{sign} {getattr(item, attribute)}")
        if isinstance(item, MaxLen):
            parts.append(f"at most {item.max_length} items")
    return ", ".join(parts)


def _default(field: Any) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    return "none" if value is None else json.dumps(value if isinstance(value, int | float | bool | str | list | dict)
                                                   else str(value))


def markdown() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        kind = _type(field.annotation).replace("|", "\\|")
        rows.append(f"| `DAS_{name.upper()}` | `{kind}` | `{_default(field)}` | "
                    f"{_bounds(field.metadata)} | {description} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
