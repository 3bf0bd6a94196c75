"""The files of a version folder: the one place their names and the importance groups are defined.

The engine writes a folder in this layout and the store publishes and reads it; both import the
names from here (this module imports nothing, so neither depends on the other).
"""

from __future__ import annotations

MANIFEST = "manifest.json"
METRICS = "train_metrics.json"

# importance groups: the keys of every importance file, each [layers, units]
GROUPS = ("head", "intermediate", "output")

IMPORTANCE_IN = "importance_in.safetensors"  # I(<=t-1): what the version trained against
DOMAIN_IMPORTANCE = "domain_importance.safetensors"  # I(t): what its domain needed
IMPORTANCE = "importance.safetensors"  # I(<=t) = max(I(<=t-1), I(t)): what it hands on
IMPORTANCE_FILES = {"importance_in": IMPORTANCE_IN, "domain_importance": DOMAIN_IMPORTANCE, "importance": IMPORTANCE}

WEIGHTS_SUFFIX = ".safetensors"  # model weights (possibly sharded: model-00001-of-00002.safetensors)


def is_weight_file(name: str) -> bool:
    """Whether a file of a version folder holds model weights (a safetensors file that is no importance file)."""
    return name.endswith(WEIGHTS_SUFFIX) and name not in IMPORTANCE_FILES.values()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # refused at publish: nothing is unpickled

TASK_MODELS = "task_models"  # TASK_MODELS/VERSION/TASK/GENERATION/: end-task models; gc removes them with VERSION
