"""DAS: continual domain-adaptive pre-training of masked LMs with soft-masking (see SPEC-DAS)."""

from .config import DASConfig
from .corpus import CorpusError, read_corpus
from .trainer import AdaptResult, Progress, adapt
from .units import FAMILIES, UnitTensors, resolve_units

__all__ = ["DASConfig", "CorpusError", "read_corpus", "AdaptResult", "Progress", "adapt",
           "FAMILIES", "UnitTensors", "resolve_units"]
