"""The log lines of `das serve` and `das worker`: one handler on the root logger, as text or as JSON lines.

Standard library logging only. Every logger of the project (and uvicorn's, and Celery's) propagates to
the root, so one handler there writes them all. The JSON form writes one object per line: `ts`
(ISO-8601, UTC), `level`, `logger`, `message`, then any fields the call passed with `extra=`
(`log.info("...", extra={"job_id": ..., "seconds": ...})`), so a log shipper can filter on them.
Fields that hold for a stretch of work rather than one call (a request's id, a job's id) are set once with
`log_fields` and land on every line logged in that context.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

from . import Settings

# the attributes every LogRecord has; anything else on a record came from `extra=`
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime",
                                                                                       "taskName", "color_message"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


_CONTEXT_FIELDS: ContextVar[dict[str, object] | None] = ContextVar("das_log_fields", default=None)


@contextmanager
def log_fields(**fields: object) -> Iterator[None]:
    """Every line logged inside the block, by this thread or task (and what it awaits, and the thread-pool calls it
    makes), carries `fields` (those that are None left out), as if each call had passed them with `extra=`."""
    token = _CONTEXT_FIELDS.set((_CONTEXT_FIELDS.get() or {}) | {k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        _CONTEXT_FIELDS.reset(token)


class ContextFields(logging.Filter):
    """A handler's filter that puts the `log_fields` of the logging context on each record it writes; a field the
    call passed itself (or a record relayed from a job's process already carries) is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT_FIELDS.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a log call passed with `extra=` (uvicorn's `color_message` copy of the message left out)."""
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the `extra=` fields, and `exception` if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key, value in extra_fields(record).items():
            line.setdefault(key, value)  # a field named like one of the four never hides it
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


# every character that could end or rewrite a text log line: C0 and C1 controls, DEL, the Unicode line and paragraph
# separators, and the bidirectional overrides that reorder what a terminal shows
_UNSAFE = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {code: ascii(chr(code))[1:-1] for code in _UNSAFE}


def one_line(text: str) -> str:
    """`text` with every control character written as its escape (a newline as `\\n`): a client's input in a message
    can never start a log line of its own or rewrite one."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with the message on one line (`one_line`); a traceback still follows on its own lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = one_line(record.message)
        return super().formatMessage(record)


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return TextFormatter()


def configure_logging(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Write every log line of this process at `settings.log_level` or above to `stream` (stderr by default), in
    `settings.log_format`. Called again, it replaces the handler it installed before; other handlers stay."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "das_handler", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.das_handler = True  # type: ignore[attr-defined]
    handler.setFormatter(make_formatter(settings.log_format))
    handler.addFilter(ContextFields())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)  # warnings.warn(...) lines go through the same handler
    return handler
