"""The docs written from the code never differ from it: docs/settings.md (das_settings.reference: every `DAS_`
variable) and docs/layers.md (das.layers: the import layers and contracts, each package's own summary)."""

from pathlib import Path

import pytest

from das import layers
from das_settings import Settings, reference

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("das", "api", "worker", "serving", "das_eval", "pipeline", "das_data", "das_engine", "job_records",
            "model_store", "das_formats", "das_settings")


@pytest.mark.parametrize("doc, writer, command", [
    ("settings.md", reference.markdown, "python -m das_settings.reference > docs/settings.md"),
    ("layers.md", layers.markdown, "python -m das.layers > docs/layers.md"),
])
def test_the_doc_is_what_the_code_writes(doc, writer, command):
    assert (ROOT / "docs" / doc).read_text(encoding="utf-8") == writer(), f"docs/{doc} differs: run `{command}`"


def test_the_settings_reference_names_every_setting_with_its_default_and_bounds():
    text = reference.markdown()
    for name in Settings.model_fields:
        assert f"| `DAS_{name.upper()}` |" in text
    assert "| `DAS_PORT` | `int` | `8000` | >= 1, <= 65535 |" in text
    assert "| `DAS_GATE_MAX_DROP` | `float` | `1.0` | >= 0, <= 100 |" in text


def test_the_layer_table_has_every_package_of_the_contract_once():
    text = layers.markdown()
    for package in PACKAGES:
        assert text.count(f"| `{package}` |") == 1, package
