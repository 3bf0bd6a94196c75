"""Two small real-text domains found on any machine that has this project installed.

- `licences`: the licence texts that installed Python distributions ship (legal prose);
- `python-docs`: the docstrings of the Python standard library, read with `ast` (nothing imported).
They let `das demo` run offline; real deployments upload their own corpora.
"""

from __future__ import annotations

import ast
import sysconfig
from importlib.metadata import distributions
from pathlib import Path

MIN_WORDS = 12


def _paragraphs(text: str) -> list[str]:
    paras = (" ".join(block.split()) for block in text.split("\n\n"))
    return [p for p in paras if len(p.split()) >= MIN_WORDS]


def licence_documents(limit: int = 4000) -> list[str]:
    seen: set[str] = set()
    docs: list[str] = []
    for dist in sorted(distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        for file in dist.files or []:
            name = file.name.upper()
            if not ("LICEN" in name or "COPYING" in name) or file.suffix in (".py", ".pyc"):
                continue
            try:
                text = Path(file.locate()).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for para in _paragraphs(text):
                if para not in seen:
                    seen.add(para)
                    docs.append(para)
    return docs[:limit]


def python_doc_documents(limit: int = 4000) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    docs.extend(_paragraphs(doc))
        if len(docs) >= limit:
            break
    return docs[:limit]


DEMO_DOMAINS = {"licences": licence_documents, "python-docs": python_doc_documents}


def write_demo_corpora(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in DEMO_DOMAINS.items():
        path = folder / f"{name}.txt"
        path.write_text("\n".join(build()) + "\n", encoding="utf-8")
        paths[name] = path
    return paths
