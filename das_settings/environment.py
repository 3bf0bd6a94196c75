"""`DAS_` environment variables that set nothing: a typo (`DAS_MAX_TEXT=8`) used to be ignored in silence.

`das serve` and the Celery worker call `warn_unknown_variables` at start-up: one WARNING per unknown variable,
naming the nearest real one.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping

from . import Settings

PREFIX = "DAS_"
# DAS_ variables the project itself reads outside Settings (documented where they are read), never reported:
# DAS_TEST_REDIS_URL: the Redis the tests use; DAS_TEST_TIMEOUT_S: one test's limit (tests/conftest.py, README.md);
# DAS_URL and DAS_TOKEN: the server and token of `das --url` and the Python client (das/remote_cli.py,
# client/das_client/client.py), which the README tells users to export beside a server's own settings.
NOT_SETTINGS = frozenset({"DAS_TEST_REDIS_URL", "DAS_TEST_TIMEOUT_S", "DAS_URL", "DAS_TOKEN"})
log = logging.getLogger(__name__)


def known_variables() -> list[str]:
    """Every DAS_ variable that means something: one per setting, and NOT_SETTINGS."""
    return sorted({PREFIX + name.upper() for name in Settings.model_fields} | NOT_SETTINGS)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One message per DAS_ variable of `environ` that is no setting, with the nearest real one (names compare
    in upper case, as Settings reads them)."""
    known = known_variables()
    messages = []
    for name in sorted(environ):
        if not name.upper().startswith(PREFIX) or name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper(), known, n=1)
        hint = f"did you mean {close[0]}?" if close else "the settings are the fields of das_settings.Settings"
        messages.append(f"{name} is not a setting and is ignored; {hint}")
    return messages


def warn_unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Log a WARNING per unknown DAS_ variable of `environ`; returns the messages."""
    messages = unknown_variables(environ)
    for message in messages:
        log.warning(message, extra={"event": "unknown_variable"})
    return messages
