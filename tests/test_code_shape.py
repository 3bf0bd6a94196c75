"""The house's shape, held: no import circle between any two modules, no module over 450 lines and no function over
60 lines outside bench/ and tests/ (issue #30). lint-imports holds the layers; this holds what it does not."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("das", "api", "worker", "serving", "das_eval", "pipeline", "das_data", "das_engine", "job_records",
            "model_store", "das_formats", "das_settings")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_module_imports_one_that_imports_it_back():
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    circles = sorted(f"{importer} <-> {imported}" for importer in graph.modules
                     for imported in graph.find_modules_directly_imported_by(importer)
                     if imported in graph.modules and importer < imported
                     and graph.chain_exists(importer=imported, imported=importer))
    assert not circles, f"import circles (split the shared part into a module both import): {circles}"


def test_no_module_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text("utf-8").splitlines()))
            > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by what they hold): {long}"


def test_no_function_over_60_lines():
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (name their steps as functions): {long}"
