"""docs/settings.md is written from `Settings` (das_settings.reference): the file and the code never differ."""

from pathlib import Path

from das_settings import Settings
from das_settings.reference import markdown

ROOT = Path(__file__).resolve().parents[1]


def test_docs_settings_is_the_reference_the_code_writes():
    assert (ROOT / "docs" / "settings.md").read_text(encoding="utf-8") == markdown(), \
        "docs/settings.md differs from Settings: run `python -m das_settings.reference > docs/settings.md`"


def test_the_reference_names_every_setting_with_its_default_and_bounds():
    text = markdown()
    for name in Settings.model_fields:
        assert f"| `DAS_{name.upper()}` |" in text
    assert "| `DAS_PORT` | `int` | `8000` | >= 1, <= 65535 |" in text
    assert "| `DAS_GATE_MAX_DROP` | `float` | `1.0` | >= 0, <= 100 |" in text
