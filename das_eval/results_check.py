"""What a results.json holds, checked: the field-by-field checks `das eval-merge` and the reports run on a results.json
(`check_results`, `check_comparable`), its limits, and how two runs' settings are compared."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any, NoReturn

from das_formats.config import DASConfig, setting_fields

from .files import FORMAT, FORMAT_VERSION, LOSS_NAMES
from .methods import METHOD_KINDS, EvalError, method_folder, parse_method
from .metrics import CORRECT, summarise_method
from .plan import KINDS, ScoringSettings

SCORE_METRICS = ("macro_f1", "accuracy")
FAMILIES = tuple(f"{kind}/{metric}" for kind in KINDS for metric in SCORE_METRICS)
DOMAIN_SIZES = ("training_documents", "heldout_documents", "train", "test", "labels")
MAX_METHOD_FOLDER = 100  # characters of a method's folder name (a file name of the reports holds it too)
MAX_MLM_LOSS = 1e6  # nats; far above any real held-out loss, and far below a float's overflow in the statistics
MAX_NUMBER = 1e300  # what a float holds with room to add a few (an integer of 400 digits does not convert)
RESULTS_FIX = ("give the results.json of a `das eval` OUT folder as `das eval` wrote it (rerunning `das eval` with "
               "the same --out writes it again from its stage files)")


def comparable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings with the DASConfig fields added since they were written filled in with their defaults.

    A new DASConfig field's default keeps the behaviour from before it existed, so a folder (or a results.json)
    written before it was added still matches a run that leaves it at its default.
    """
    if not isinstance(settings.get("train"), dict):
        return settings
    defaults = DASConfig().to_dict()
    defaults.pop("seed")
    return {**settings, "train": {**defaults, **settings["train"]}}


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return found


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
# checking a results.json: what merge_results and write_reports read, and that one run agrees with itself


class _Bad(Exception):
    """A problem at a field path (dots between keys); the public checks add the file's name and what to do (unless
    the problem has its own `fix`)."""

    def __init__(self, path: str, problem: str, fix: str | None = None) -> None:
        super().__init__(f"{path} {problem}" if path else problem)
        self.fix = fix


def _named(name: str, bad: _Bad) -> NoReturn:
    raise EvalError(f"{name}: {bad}; {RESULTS_FIX}") from None


def check_comparable(results: Any, name: str) -> None:
    """What merge_results compares between runs: the format, domains, families, seeds and settings."""
    try:
        _check_comparable(results)
    except _Bad as bad:
        _named(name, bad)


def check_results(results: Any, name: str) -> None:
    """Everything merge_results and write_reports read, with its types, and that the run agrees with itself:
    methods with their names and settings, every (N + 1) x N score matrix with the domains and seeds, the summary
    with the scores (it is recomputed). EvalError naming `name` and the field."""
    try:
        _check_comparable(results)
        _check_run(results)
    except _Bad as bad:
        _named(name, bad)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    names = {str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false"}


def _of(value: Any, where: str, want: type) -> Any:
    if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
        raise _Bad(where or "the file", f"is {_kind(value)}, expected {TYPE_NAMES[want]}")
    return value


def _get(container: dict[str, Any], key: str, where: str, want: type | None = None) -> Any:
    path = f"{where}.{key}" if where else key
    if key not in container:
        raise _Bad(path, "is missing")
    return container[key] if want is None else _of(container[key], path, want)


def _number(value: Any, where: str, low: float | None = None, high: float | None = None) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_NUMBER:
        shown = f"a number of {len(str(abs(value)))} digits" if isinstance(value, int) and number else _kind(value)
        raise _Bad(where, f"is {shown}, expected a finite number (at most {MAX_NUMBER:g} in size)")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"within {low}..{high}" if high is not None else f">= {low}"
        raise _Bad(where, f"is {value!r}, expected a number {bounds}")
    return value


def _keys(container: dict[str, Any], expected: Sequence[str], where: str, what: str) -> None:
    missing = [k for k in expected if k not in container]
    extra = [k for k in container if k not in expected]
    if missing or extra:
        raise _Bad(where, f"has {what} {list(container)}, expected {list(expected)}")


def _strings(value: Any, where: str) -> list[str]:
    """A non-empty list of distinct non-empty strings."""
    _of(value, where, list)
    for i, item in enumerate(value):
        if not _of(item, f"{where}.{i}", str).strip():
            raise _Bad(f"{where}.{i}", "is an empty string")
    if not value or len(set(value)) != len(value):
        raise _Bad(where, f"is {_short(value)}, expected a non-empty list of distinct names")
    return value


def _check_comparable(r: Any) -> None:
    _of(r, "", dict)
    if _get(r, "format", "") != FORMAT:
        raise _Bad("format", f"is {_short(r['format'])}, expected {FORMAT!r}: not a results.json of `das eval`")
    if _get(r, "format_version", "") != FORMAT_VERSION or isinstance(r["format_version"], bool):
        raise _Bad("format_version", f"is {_short(r['format_version'])}; this `das` reads version {FORMAT_VERSION}")
    domains = _strings(_get(r, "domains", ""), "domains")
    if "loss_kind" in r and r["loss_kind"] not in LOSS_NAMES:  # absent: written before causal LMs, "mlm"
        raise _Bad("loss_kind", f"is {_short(r['loss_kind'])}, expected one of {', '.join(LOSS_NAMES)}")
    for i, family in enumerate(_strings(_get(r, "families", ""), "families")):
        if family not in FAMILIES:
            raise _Bad(f"families.{i}", f"is {family!r}, expected one of {', '.join(FAMILIES)}")
    seeds = _get(r, "seeds", "", list)
    for i, seed in enumerate(seeds):
        if _of(seed, f"seeds.{i}", int) < 0 or seed >= 2**32:
            raise _Bad(f"seeds.{i}", f"is {seed}, expected a seed within 0..{2**32 - 1}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise _Bad("seeds", f"is {_short(seeds)}, expected a non-empty list of distinct seeds")
    settings = _get(r, "settings", "", dict)
    version = _get(settings, "format_version", "settings")
    if _get(settings, "format", "settings") != FORMAT or version != FORMAT_VERSION or isinstance(version, bool):
        raise _Bad("settings", f"are of format {_short(settings['format'])} version "
                               f"{_short(settings['format_version'])}, expected {FORMAT!r} version {FORMAT_VERSION}")
    _get(settings, "base_fingerprint", "settings", str)
    _check_config(_get(settings, "train", "settings", dict), "settings.train", seed=False)
    finetune = _check_scoring(_get(settings, "scoring", "settings", dict))
    expected = [f for f in FAMILIES if finetune or not f.startswith("finetune/")]
    if r["families"] != expected:
        raise _Bad("families", f"are {r['families']}, but settings.scoring gives {expected}")
    recorded = []
    for i, domain in enumerate(_get(settings, "domains", "settings", list)):
        recorded.append(_get(_of(domain, f"settings.domains.{i}", dict), "name", f"settings.domains.{i}", str))
        _get(domain, "fingerprint", f"settings.domains.{i}", str)
    if recorded != domains:
        raise _Bad("settings.domains", f"names {recorded}, but domains are {domains}")


def _check_config(values: dict[str, Any], where: str, *, seed: bool) -> None:
    """DASConfig settings as `to_dict` writes them (a field added since may be absent: its default applies)."""
    fields = {f.name: f for f in setting_fields(DASConfig)}
    for key, value in values.items():
        f = fields.get(key)
        if f is None or (key == "seed" and not seed):
            raise _Bad(f"{where}.{key}", "is not a DASConfig setting")
        if value is None and f.optional:
            continue
        if f.type is float:
            _number(value, f"{where}.{key}")
        else:
            _of(value, f"{where}.{key}", f.type)
        if f.choices and value not in f.choices:
            raise _Bad(f"{where}.{key}", f"is {value!r}, expected one of {', '.join(f.choices)}")
    try:
        DASConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise _Bad(where, f"is not a valid DASConfig ({err})") from None


def _check_scoring(values: dict[str, Any]) -> bool:
    """settings.scoring as ScoringSettings.compared() writes it; returns whether fine-tuning was on."""
    types = {f.name: type(f.default) for f in dataclasses.fields(ScoringSettings)}
    for key, value in values.items():
        if key not in types:
            raise _Bad(f"settings.scoring.{key}", "is not a scoring setting")
        if types[key] is float:
            _number(value, f"settings.scoring.{key}")
        else:
            _of(value, f"settings.scoring.{key}", types[key])
    try:
        scoring = ScoringSettings(**values)
    except (TypeError, ValueError) as err:
        raise _Bad("settings.scoring", f"is not valid ({err})") from None
    _keys(values, list(scoring.compared()), "settings.scoring", "settings")
    return scoring.finetune


def _check_run(r: dict[str, Any]) -> None:
    domains, families, seeds = r["domains"], r["families"], r["seeds"]
    _get(r, "date", "", str)
    _get(r, "base", "", str)
    if _get(r, "stages", "") != ["base", *domains]:
        raise _Bad("stages", f"is {_short(r['stages'])}, expected {['base', *domains]}")
    methods = _get(r, "methods", "", dict)
    if not methods:
        raise _Bad("methods", "is empty")
    for spec, method in methods.items():
        _check_method(spec, method, r["settings"]["train"], seeds)
    scores, summary = _get(r, "scores", "", dict), _get(r, "summary", "", dict)
    for key, container in (("scores", scores), ("summary", summary)):
        _keys(container, list(methods), key, "methods")
    for spec, by_seed in scores.items():
        _check_scores(by_seed, f"scores.{spec}", len(domains), families, seeds, base=methods[spec]["kind"] == "base")
        expected = _as_written(summary[spec], summarise_method(list(by_seed.values()), families))
        found = _difference(summary[spec], expected, f"summary.{spec}")
        if found:
            raise _Bad(found[0], f"{found[1]}: the summary does not match the scores (the file was edited or damaged)")
    _check_cost(_get(r, "cost", "", dict), [s for s, m in methods.items() if m["kind"] != "base"])
    for i, command in enumerate(_get(r, "commands", "", list)):
        _get(_of(command, f"commands.{i}", dict), "date", f"commands.{i}", str)
        argv = _get(command, "argv", f"commands.{i}")
        if argv is not None:
            for j, word in enumerate(_of(argv, f"commands.{i}.argv", list)):
                _of(word, f"commands.{i}.argv.{j}", str)
    if "domain_sizes" in r:
        _keys(_of(r["domain_sizes"], "domain_sizes", dict), domains, "domain_sizes", "domains")
        for name, sizes in r["domain_sizes"].items():
            _keys(_of(sizes, f"domain_sizes.{name}", dict), DOMAIN_SIZES, f"domain_sizes.{name}", "keys")
            for key, value in sizes.items():
                if _of(value, f"domain_sizes.{name}.{key}", int) < 0:
                    raise _Bad(f"domain_sizes.{name}.{key}", f"is {value}, expected a count >= 0")
    if "machine" in r:
        _of(r["machine"], "machine", dict)


def _check_method(spec: str, method: Any, train: dict[str, Any], seeds: list[int]) -> None:
    where = f"methods.{spec}"
    if not spec.strip() or spec != spec.strip() or len(method_folder(spec)) > MAX_METHOD_FOLDER:
        raise _Bad(where, "is not a method name `das eval` writes")
    kind = _get(_of(method, where, dict), "kind", where, str)
    if kind not in METHOD_KINDS or kind != spec.partition(":")[0]:
        raise _Bad(f"{where}.kind", f"is {kind!r}, but the method's name gives {spec.partition(':')[0]!r}")
    if _get(method, "folder", where, str) != method_folder(spec):
        raise _Bad(f"{where}.folder", f"is {method['folder']!r}, expected {method_folder(spec)!r}")
    try:
        overrides = parse_method(spec).overrides
    except EvalError as err:
        raise _Bad(where, f"cannot be read ({err})") from None
    if _get(method, "overrides", where, dict) != overrides:
        raise _Bad(f"{where}.overrides", f"is {_short(method['overrides'])}, but the method's name gives "
                                         f"{_short(overrides)}")
    config = _get(method, "config", where)
    if kind == "base":
        if config is not None:
            raise _Bad(f"{where}.config", f"is {_kind(config)}, expected null (the base model is not trained)")
        return
    _check_config(_of(config, f"{where}.config", dict), f"{where}.config", seed=True)
    shared = comparable_settings({"train": train})["train"]  # a field absent from both was added since
    for key, value in {**shared, **overrides, "seed": seeds[0]}.items():
        if key in config and config[key] != value:
            raise _Bad(f"{where}.config.{key}", f"is {_short(config[key])}, but settings.train, the method and "
                                                f"the first seed give {_short(value)}")


def _check_scores(by_seed: Any, where: str, n: int, families: list[str], seeds: list[int], *, base: bool) -> None:
    """Per seed, per family and the MLM loss: an (N + 1) x N matrix (row T: after T domains; a[T][j]: domain j);
    and, optional (runs scored before it was recorded lack it), the probe's per-example strings (CORRECT)."""
    _keys(_of(by_seed, where, dict), [str(s) for s in seeds], where, "seeds")
    for seed, entry in by_seed.items():
        keys = [*families, "mlm_loss"] + ([CORRECT] if isinstance(entry, dict) and CORRECT in entry else [])
        _keys(_of(entry, f"{where}.{seed}", dict), keys, f"{where}.{seed}", "keys")
        if CORRECT in entry:
            _check_correct_matrix(entry[CORRECT], f"{where}.{seed}.{CORRECT}", n, base=base)
        for key in [*families, "mlm_loss"]:
            at = f"{where}.{seed}.{key}"
            matrix = _of(entry[key], at, list)
            if len(matrix) != n + 1:
                raise _Bad(at, f"has {len(matrix)} row(s), expected {n + 1} (stage 0, the base model, and one per "
                               "domain)")
            for t, row in enumerate(matrix):
                if len(_of(row, f"{at} row {t}", list)) != n:
                    raise _Bad(f"{at} row {t}", f"has {len(row)} value(s), expected {n} (one per domain)")
                for j, value in enumerate(row):
                    _number(value, f"{at} row {t} value {j}", 0, MAX_MLM_LOSS if key == "mlm_loss" else 100)
            if base and any(row != matrix[0] for row in matrix):
                raise _Bad(at, "has rows that differ, but the base model is not trained: every stage is stage 0")


def _correct(value: Any, where: str) -> str:
    """A probe's per-example string: '1' (right) or '0' (wrong) per test example, at least one."""
    if not _of(value, where, str) or set(value) - {"0", "1"}:
        raise _Bad(where, f"is {_short(value)}, expected a non-empty string of '0' and '1' (one per test example)")
    return value


def _check_correct_matrix(matrix: Any, where: str, n: int, *, base: bool) -> None:
    """(N + 1) x N per-example strings (or null where a stage did not record them); a domain's strings are of one
    length (its test examples) at every stage."""
    if len(_of(matrix, where, list)) != n + 1:
        raise _Bad(where, f"has {len(matrix)} row(s), expected {n + 1} (stage 0, the base model, and one per domain)")
    for t, row in enumerate(matrix):
        if len(_of(row, f"{where} row {t}", list)) != n:
            raise _Bad(f"{where} row {t}", f"has {len(row)} value(s), expected {n} (one per domain)")
        for j, value in enumerate(row):
            if value is not None:
                _correct(value, f"{where} row {t} value {j}")
    for j in range(n):
        lengths = {len(row[j]) for row in matrix if row[j] is not None}
        if len(lengths) > 1:
            raise _Bad(where, f"has strings of lengths {sorted(lengths)} for domain {j}, expected one length (its "
                              "test examples)")
    if base and any(row != matrix[0] for row in matrix):
        raise _Bad(where, "has rows that differ, but the base model is not trained: every stage is stage 0")


def _check_cost(cost: dict[str, Any], trained: list[str]) -> None:
    """Types only: `ratio_to_ncl` is each run's own (a merged results.json holds costs of several runs)."""
    for spec, entry in cost.items():
        where = f"cost.{spec}"
        if spec not in trained:
            raise _Bad(where, f"is the cost of a method this run did not train (trained: {trained})")
        _number(_get(_of(entry, where, dict), "median_step_s", where), f"{where}.median_step_s", 0)
        ratio = _get(entry, "ratio_to_ncl", where)
        if ratio is not None:
            _number(ratio, f"{where}.ratio_to_ncl", 0)
        wall = _get(entry, "stage_wall_time_s", where, dict)
        count = _of(_get(wall, "n", f"{where}.stage_wall_time_s"), f"{where}.stage_wall_time_s.n", int)
        if count < 0:
            raise _Bad(f"{where}.stage_wall_time_s.n", f"is {count}, expected a count >= 0")
        for key in ("mean", "std"):
            value = _get(wall, key, f"{where}.stage_wall_time_s")
            if (value is None) != (count == 0):
                raise _Bad(f"{where}.stage_wall_time_s.{key}", f"is {_kind(value)} with n = {count}")
            if value is not None:
                _number(value, f"{where}.stage_wall_time_s.{key}", 0)


def _as_written(stored: Any, expected: dict[str, Any]) -> dict[str, Any]:
    """The recomputed summary less the MLM gain where the stored one lacks it, as written before it existed
    (mlm_loss.gain, gain_per_domain and each per_seed gain: all absent, or all present and matching the scores).
    "flips" needs no such leave: it is recomputed only from per-example strings (CORRECT), which such files lack."""
    losses = stored.get("mlm_loss") if isinstance(stored, dict) else None
    if not isinstance(losses, dict) or "gain" in losses or "gain_per_domain" in losses:
        return expected
    per_seed = losses.get("per_seed")
    if any(isinstance(s, dict) and "gain" in s for s in (per_seed if isinstance(per_seed, list) else [])):
        return expected
    old = {k: v for k, v in expected["mlm_loss"].items() if k not in ("gain", "gain_per_domain")}
    old["per_seed"] = [{k: v for k, v in s.items() if k != "gain"} for s in old["per_seed"]]
    return {**expected, "mlm_loss": old}


def _difference(stored: Any, expected: Any, where: str) -> tuple[str, str] | None:
    """The first place where `stored` differs from `expected` (numbers to 1e-9), as (path, what)."""
    if isinstance(expected, dict):
        if not isinstance(stored, dict):
            return where, f"is {_kind(stored)}, expected an object"
        for key in [*expected, *(k for k in stored if k not in expected)]:
            if key not in stored or key not in expected:
                return f"{where}.{key}", "is missing" if key not in stored else "is not a summary field"
            found = _difference(stored[key], expected[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list):
        if not isinstance(stored, list):
            return where, f"is {_kind(stored)}, expected a list"
        if len(stored) != len(expected):
            return where, f"has {len(stored)} item(s), expected {len(expected)}"
        for i, (a, b) in enumerate(zip(stored, expected, strict=True)):
            found = _difference(a, b, f"{where}.{i}")
            if found:
                return found
        return None
    if isinstance(expected, float | int) and not isinstance(expected, bool):
        same = (isinstance(stored, int | float) and not isinstance(stored, bool) and abs(stored) <= MAX_NUMBER
                and math.isclose(stored, expected, rel_tol=1e-9, abs_tol=1e-9))
    else:
        same = stored == expected and type(stored) is type(expected)
    return None if same else (where, f"is {_kind(stored)}, but the scores give {_short(expected)}")
