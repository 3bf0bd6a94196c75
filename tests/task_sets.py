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

from das_data.domain_folder import Example
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


# ------------------------------------------------------------------ domain folders for `das eval`
def _stdlib_docstrings() -> list[Example]:
    """First paragraphs of stdlib docstrings, labelled by what they document (a class or a function)."""
    found: dict[str, str] = {}
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node)
                text = " ".join(doc.split("\n\n")[0].split()) if doc else ""
                if len(text.split()) >= 8:
                    found.setdefault(text, "class" if isinstance(node, ast.ClassDef) else "function")
        if sum(label == "class" for label in found.values()) >= 40:
            break
    return [Example(text, label) for text, label in found.items()]


def _licence_paragraphs() -> list[Example]:
    """Licence paragraphs, labelled by whether they are written in capitals (warranty disclaimers mostly)."""
    def shouting(text: str) -> bool:
        letters = [c for c in text if c.isalpha()]
        return sum(c.isupper() for c in letters) > 0.6 * len(letters)

    return [Example(text, "capitals" if shouting(text) else "plain") for text in licence_documents()]


def write_domain_folder(folder: Path, name: str, examples: list[Example], corpus: list[str]) -> Path:
    """A domain folder: the first 20 examples of each label to train, the next 10 to test, the corpus without the
    test texts."""
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    train = [e for group in by_label.values() for e in group[:20]]
    test = [e for group in by_label.values() for e in group[20:30]]
    test_texts = {e.text for e in test}
    folder.mkdir(parents=True)
    (folder / "corpus.txt").write_text("".join(d + "\n" for d in corpus if d not in test_texts), encoding="utf-8")
    for split, rows in (("train", train), ("test", test)):
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in rows), encoding="utf-8")
    meta = {"name": name, "source": "made by tests/task_sets.py", "licence": "as the texts' own",
            "metric": "macro_f1", "labels": sorted(by_label), "notes": {}}
    (folder / "domain.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def eval_domains(root: Path) -> list[Path]:
    """Two tiny domain folders (docs/domains.md) under `root`: `code` (stdlib docstrings, class or function) and
    `legal` (licence paragraphs, in capitals or plain), 20 train and 10 test examples per label."""
    code = write_domain_folder(root / "code", "code", _stdlib_docstrings(), python_doc_documents(limit=120)[:120])
    legal = write_domain_folder(root / "legal", "legal", _licence_paragraphs(), licence_documents()[:120])
    return [code, legal]
