"""Methods of an evaluation: `base` (the original model, never trained), `ncl` (plain continual MLM: no
soft-mask, no importance, no contrastive term), `das` (DASConfig's defaults: DAS as the spec has it), `default`
(what an upload gets: das_formats.config.UPLOAD_DEFAULTS) and variants named by their settings,
`das:mask_mode=grad,negative_rule=abs`. `parse_method` turns a name into DASConfig overrides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from das_formats.config import UPLOAD_DEFAULTS, DASConfig, SettingField, setting_fields


class EvalError(ValueError):
    """An evaluation cannot be planned or resumed; the message says what to change."""


METHOD_KINDS: dict[str, dict[str, Any]] = {
    "base": {},  # never trained: a[T, i] = a[0, i]
    "ncl": {"softmask": False},  # plain continual MLM: no soft-mask, no importance, no contrastive term
    "das": {},  # DAS with DASConfig's defaults
    "default": dict(UPLOAD_DEFAULTS),  # what an upload gets for the settings it does not give
}


@dataclass(frozen=True)
class Method:
    spec: str  # as given, e.g. "das:mask_mode=grad"
    kind: Literal["base", "ncl", "das", "default"]
    overrides: dict[str, Any]  # DASConfig fields this method sets (the kind's own and the spec's)

    @property
    def trains(self) -> bool:
        return self.kind != "base"

    @property
    def folder(self) -> str:
        return method_folder(self.spec)


def method_folder(spec: str) -> str:
    """A folder name for a method: ':' and ',' become '+', '=' becomes '-', anything odd '_'.

    das:mask_mode=grad,negative_rule=abs -> das+mask_mode-grad+negative_rule-abs
    """
    name = spec.replace(":", "+").replace(",", "+").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def parse_method(spec: str) -> Method:
    """`base`, `ncl`, `das`, or `KIND:key=value,key=value` (DASConfig fields) for `ncl`/`das`.

    Values are read by the field's type (bool: true/false, an optional number: none); the result is
    validated by DASConfig, and any problem is an EvalError naming the method.
    """
    spec = spec.strip()
    kind, _, settings = spec.partition(":")
    if kind not in METHOD_KINDS:
        raise EvalError(f"method {spec!r}: unknown kind {kind!r}; a method is one of {', '.join(METHOD_KINDS)}, "
                        "optionally followed by ':key=value,...' (DASConfig fields), e.g. das:mask_mode=grad")
    if kind == "base" and settings:
        raise EvalError(f"method {spec!r}: 'base' is the untrained model and takes no settings")
    if ":" in spec and not settings.strip():
        raise EvalError(f"method {spec!r}: nothing after ':'; give key=value pairs or drop the ':'")
    overrides = dict(METHOD_KINDS[kind])
    overrides.update(parse_settings(settings, what=f"method {spec!r}"))
    if kind != "base":
        check_overrides(overrides, what=f"method {spec!r}")
    return Method(spec, kind, overrides)  # type: ignore[arg-type]


def parse_settings(text: str, *, what: str) -> dict[str, Any]:
    """'key=value,key=value' -> {field: typed value} for DASConfig fields (empty text: {})."""
    fields = {f.name: f for f in setting_fields(DASConfig)}
    values: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise EvalError(f"{what}: {item!r} is not key=value")
        if key == "seed":
            raise EvalError(f"{what}: the seed is set by --seeds (seeds 0..K-1), not per method")
        if key not in fields:
            raise EvalError(f"{what}: {key!r} is not a DASConfig field; known: {', '.join(sorted(fields))}")
        values[key] = _typed(fields[key], raw, what)
    return values


def _typed(f: SettingField, raw: str, what: str) -> Any:
    """A setting's text value as the field's type."""
    low = raw.lower()
    if f.optional and low in ("none", "off", "null"):
        return None
    try:
        if f.type is bool:
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if f.type is int:
            return int(raw)
        if f.type is float:
            return float(raw)
    except ValueError:
        raise EvalError(f"{what}: {f.name}={raw!r} is not a valid {f.type.__name__}") from None
    if f.choices and raw not in f.choices:
        raise EvalError(f"{what}: {f.name} must be one of {', '.join(f.choices)}, got {raw!r}")
    return raw


def check_overrides(overrides: dict[str, Any], *, what: str) -> DASConfig:
    """The DASConfig these overrides make (seed 0), or an EvalError that names `what` and the problem."""
    try:
        return DASConfig.from_dict(overrides)
    except ValueError as err:
        raise EvalError(f"{what}: {err}") from None


def split_methods(text: str) -> list[str]:
    """'base,ncl,das:a=1,b=2' -> ['base', 'ncl', 'das:a=1,b=2']: a part with '=' and no ':' continues the method
    before it."""
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and specs and ":" in specs[-1]:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs
