"""Inputs that say no: a field, parameter or JSON key that no route declares is a 422 naming it, never ignored.

`-F step=5` on an upload was accepted and ran the defaults (the field is `steps`). Each route's own declaration
is the list of what it accepts, so a route added later is covered with no code of its own:
- form fields and query parameters: `refuse_unknown_inputs`, a dependency every router is included with
  (api.main), reads the matched route's declared parameters (FastAPI's `Dependant`) before the endpoint runs;
- JSON bodies: the request models forbid extra keys (pydantic's `extra_forbidden`), and `explain_unknown_fields`
  (called by the 422 handler, api.limits) names the nearest declared field at the level the key was sent.
The suggestion is difflib's closest match; with none close enough, the message lists the accepted names.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import Depends, Request
from fastapi import params as fastapi_params
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

UNKNOWN = "extra_forbidden"  # pydantic's error type for a key a model does not declare; ours use it too


def unknown_message(what: str, name: str, accepted: Iterable[str], where: str = "") -> str:
    """`unknown form field 'step'; did you mean 'steps'?`, or the accepted names when none is close; `where`: the
    path of the object a JSON key was sent in (nested models)."""
    accepted = sorted(set(accepted))
    unknown = f"unknown {what} {name!r}" + (f" in {where!r}" if where else "")
    close = difflib.get_close_matches(name, accepted, n=1)
    if close:
        return f"{unknown}; did you mean {close[0]!r}?"
    if not accepted:
        return f"{unknown}; none is accepted here"
    return f"{unknown}; the accepted ones are: {', '.join(accepted)}"


def _dependant(request: Request) -> Dependant | None:
    """The matched route's dependency tree. FastAPI keeps the one with the include_router dependencies in a
    scope entry of its own (the route's own tree lacks only those, which take headers here); either will do."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return None
    context = request.scope.get("fastapi", {}).get("effective_route_context")
    effective = getattr(context, "dependant", None) if getattr(context, "original_route", None) is route else None
    return effective if isinstance(effective, Dependant) else route.dependant


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _walk(sub)


def _names(fields: Iterable[Any]) -> set[str]:
    """The names a client sends for these FastAPI fields; a pydantic model declared as Query() or Form() stands
    for its own fields."""
    names: set[str] = set()
    for field in fields:
        model = _model_in(field.field_info.annotation)
        if model is not None and isinstance(field.field_info, (fastapi_params.Query, fastapi_params.Form)):
            names |= _model_field_names(model)
        else:
            names.add(field.alias)
    return names


def declared_inputs(dependant: Dependant) -> tuple[set[str], set[str] | None]:
    """(query parameter names, form field names or None when the route takes no form) of a route."""
    query: set[str] = set()
    form: set[str] | None = None
    for part in _walk(dependant):
        query |= _names(part.query_params)
        form_fields = [f for f in part.body_params if isinstance(f.field_info, fastapi_params.Form)]  # File too
        if form_fields:
            form = (form or set()) | _names(form_fields)
    return query, form


LENIENT_TAGS = {"health", "ui"}  # health checkers and tracking links add query strings of their own: ignored there
REPEATED = "repeated_input"


async def refuse_unknown_inputs(request: Request) -> None:
    """422 for any query parameter or form field the matched route does not declare, each named with the
    nearest declared one, and for one sent more than once (never "the last one wins"). Runs before the endpoint,
    so nothing is stored or queued. The health routes and /ui ignore query strings."""
    dependant = _dependant(request)
    if dependant is None:
        return
    query, form = declared_inputs(dependant)
    route = request.scope.get("route")
    errors = []
    if not LENIENT_TAGS & set(getattr(route, "tags", None) or ()):
        errors += [{"type": UNKNOWN, "loc": ("query", name), "msg": unknown_message("query parameter", name, query),
                    "input": request.query_params.get(name)}
                   for name in dict.fromkeys(request.query_params.keys()) if name not in query]
        errors += _repeated("query parameter", "query", request.query_params.multi_items())
    if form is not None:
        sent = await request.form()  # FastAPI parsed it already for the route; Starlette keeps it
        errors += [{"type": UNKNOWN, "loc": ("body", name), "msg": unknown_message("form field", name, form),
                    "input": sent.get(name) if isinstance(sent.get(name), str) else "(a file)"}
                   for name in dict.fromkeys(sent.keys()) if name not in form]
        errors += _repeated("form field", "body", sent.multi_items())
    if errors:
        raise RequestValidationError(errors)


def _repeated(what: str, where: str, items: list[tuple[str, Any]]) -> list[dict]:
    """An error for each name sent more than once: no route here takes a list from repeated fields."""
    counts = Counter(name for name, _ in items)
    return [{"type": REPEATED, "loc": (where, name), "msg": f"{what} {name!r} was sent {n} times; send it once",
             "input": None} for name, n in counts.items() if n > 1]


StrictInputs = Depends(refuse_unknown_inputs)


def explain_unknown_fields(errors: list[dict], request: Request) -> list[dict]:
    """Pydantic's `extra_forbidden` errors on a JSON body ("Extra inputs are not permitted") with a message that
    names the key and the nearest field declared where it was sent (nested models too)."""
    body = _body_annotation(request)
    explained = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        ours = str(error.get("msg", "")).startswith("unknown ")  # refuse_unknown_inputs' errors say it already
        if error.get("type") == UNKNOWN and not ours and loc[:1] == ("body",) and len(loc) > 1 and body is not None:
            accepted = _fields_at(body, loc[1:-1])
            where = ".".join(str(part) for part in loc[1:-1])
            error = {**error, "msg": unknown_message("field", str(loc[-1]), accepted or (), where)
                     if accepted is not None else f"unknown field {loc[-1]!r}" + (f" in {where!r}" if where else "")}
        explained.append(error)
    return explained


def _body_annotation(request: Request) -> Any:
    route = request.scope.get("route")
    field = getattr(route, "body_field", None) if isinstance(route, APIRoute) else None
    return field.field_info.annotation if field is not None else None


def _fields_at(annotation: Any, path: tuple) -> set[str] | None:
    """The field names of the model found by following `path` (field names, list indices) from `annotation`;
    None where the path leads to no single model."""
    for part in path:
        annotation = _inner(annotation, part)
        if annotation is None:
            return None
    model = _model_in(annotation)
    return _model_field_names(model) if model is not None else None


def _inner(annotation: Any, part: Any) -> Any:
    """The annotation one step down: a model's field by name or alias, a list's or dict's items."""
    annotation = _unwrapped(annotation)
    model = _model_in(annotation)
    if model is not None:
        for name, field in model.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, tuple, set, frozenset) and isinstance(part, int) and args:
        return args[0]
    if typing.get_origin(annotation) is dict and len(args) == 2:
        return args[1]
    return None


def _unwrapped(annotation: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X (a union of several types stays)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            kept = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(kept) == 1:
                annotation = kept[0]
                continue
        return annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrapped(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _model_field_names(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}
