"""docs/layers.md is written from the code (das.layers): the layer table and the contracts never differ from
pyproject.toml and the packages' own docstrings."""

from pathlib import Path

from das.layers import markdown

ROOT = Path(__file__).resolve().parents[1]


def test_docs_layers_is_the_table_the_code_writes():
    assert (ROOT / "docs" / "layers.md").read_text(encoding="utf-8") == markdown(), \
        "docs/layers.md differs from the code: run `python -m das.layers > docs/layers.md`"


def test_the_table_has_every_package_of_the_contract_once():
    text = markdown()
    for package in ("das", "api", "worker", "serving", "das_eval", "pipeline", "das_data", "das_engine",
                    "job_records", "model_store", "das_formats", "das_settings"):
        assert text.count(f"| `{package}` |") == 1, package
