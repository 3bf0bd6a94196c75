"""docs/layers.md, written from the code: the import layers of pyproject.toml's import-linter contract, each package
with the first paragraph of its own docstring, and every other contract by name. `python -m das.layers >
docs/layers.md` writes it; tests/test_generated_docs.py fails when the file and the code differ."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """# Packages, and the one direction of their imports

Written from the code: `python -m das.layers > docs/layers.md` (`tests/test_generated_docs.py` fails when the two
differ). The layers are import-linter's contract in `pyproject.toml`, top to bottom; what each package holds is
the first paragraph of its `__init__.py`. A package imports only from layers below it; packages that share a layer
do not import each other. `make test` runs `lint-imports`, which checks these contracts and the others below;
`tests/test_code_shape.py` holds no import circle between any two modules.

| layer | package | holds |
|---|---|---|
"""


def _summary(package: str) -> str:
    """The first paragraph of a package's docstring, on one line."""
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text("utf-8"))) or ""
    first = docstring.split("\n\n")[0]
    return re.sub(r"\s+", " ", first).strip().replace("|", "\\|")


def markdown() -> str:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    rows = []
    for number, layer in zip(range(len(layers), 0, -1), layers, strict=True):
        for package in (p.strip() for p in layer.split("|")):
            rows.append(f"| {number} | `{package}` | {_summary(package)} |")
    others = [f"- {c['name']}" for c in contracts if c["type"] != "layers"]
    return HEADER + "\n".join(rows) + "\n\nThe other contracts:\n\n" + "\n".join(others) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
