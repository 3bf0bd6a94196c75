"""Labeled sets that the tests make from real text on this machine (no downloads).

- `source`: is a paragraph from a licence file or from a Python docstring? (two domains)
- `topic`: is a standard-library docstring about networking or about text processing? (one domain)
Each set is split deterministically into train, eval and held-out texts.
"""

from __future__ import annotations

import ast
import json
import random
import sysconfig
from pathlib import Path

from das_data.local_corpora import licence_documents, python_doc_documents

TOPIC_MODULES = {"network": ["http/client.py", "http/server.py", "http/cookiejar.py", "urllib/request.py",
                             "urllib/parse.py", "smtplib.py", "ftplib.py", "socket.py", "ssl.py", "imaplib.py",
                             "poplib.py", "socketserver.py"],
                 "text": ["string.py", "textwrap.py", "re/__init__.py", "re/_parser.py", "difflib.py",
                          "gettext.py", "locale.py", "codecs.py", "html/parser.py", "csv.py", "shlex.py",
                          "tokenize.py", "stringprep.py", "unicodedata.py", "fnmatch.py", "sre_parse.py"]}


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and len(doc.split()) >= 4:
                found.append(" ".join(doc.split())[:600])
    return found


def _split(rows: list[tuple[str, str]], n_train: int, n_eval: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    by_label: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    out = {"train": [], "eval": [], "heldout": []}
    for label in sorted(by_label):
        items = sorted(set(by_label[label]))
        random.Random(seed).shuffle(items)
        out["train"] += items[:n_train]
        out["eval"] += items[n_train:n_train + n_eval]
        out["heldout"] += items[n_train + n_eval:n_train + 2 * n_eval]
    return out


def source_task(n_train: int = 60, n_eval: int = 50) -> dict[str, list[tuple[str, str]]]:
    rows = ([(t[:600], "licence") for t in licence_documents()[:400]]
            + [(t[:600], "code") for t in python_doc_documents(400)])
    return _split(rows, n_train, n_eval)


def topic_task(n_train: int = 60, n_eval: int = 40) -> dict[str, list[tuple[str, str]]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = [(text, label) for label, files in TOPIC_MODULES.items() for name in files
            for text in _docstrings(stdlib / name)]
    return _split(rows, n_train, n_eval)


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
    return path
