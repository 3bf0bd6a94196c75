"""CLI options generated from a settings dataclass: every DASConfig field is a flag of `das adapt`,
every TaskSettings field one of `das task add`, with the engine's help and default."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal

import typer

from das_formats.config import SettingField, setting_fields


def _optional_float(value: str | float | None) -> float | None:
    """'none' (or 'off') is None; typer also hands the default through here."""
    if value is None or isinstance(value, float | int):
        return value
    return None if value.strip().lower() in ("none", "off") else float(value)


def _option(field: SettingField) -> inspect.Parameter:
    kind = Literal[field.choices] if field.choices else field.type  # typer shows a Literal's values as choices
    if field.optional:
        info = typer.Option(help=field.help, parser=_optional_float, show_default=True)  # 'none' -> None
    else:
        info = typer.Option(help=field.help, show_default=True)
    annotation = Annotated[kind, info]
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=annotation)


def config_options(command: Callable[..., Any], settings_class: type | None = None) -> Callable[..., Any]:
    """Give `command` one option per field of `settings_class` (DASConfig unless told); it receives
    them as `config_values` (a dict)."""
    fields = setting_fields(settings_class)
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "config_values"]
    clash = {p.name for p in own} & {f.name for f in fields}
    if clash:
        raise TypeError(f"{command.__name__} has parameters that the settings already define: {sorted(clash)}")

    def wrapper(**kwargs: Any) -> Any:
        values = {f.name: kwargs.pop(f.name) for f in fields}
        return command(**kwargs, config_values=values)

    params = own + [_option(f) for f in fields]
    wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
    wrapper.__signature__ = signature.replace(parameters=params)  # what typer reads
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
