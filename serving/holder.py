"""Hot swap: load a version in the background, warm it, then flip one reference.

Requests take `holder.current` once; a swap never touches a model that is answering, so
in-flight requests finish on the old version and no request fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from .model import LoadedModel

log = logging.getLogger(__name__)


class ModelHolder:
    def __init__(self, resolve: Callable[[str], Path]) -> None:
        self.resolve = resolve  # version id -> local model folder
        self.current: LoadedModel | None = None
        self._lock = threading.Lock()  # one load at a time

    def ensure(self, version: str) -> bool:
        """Load, warm and swap in `version` unless it is already current. True if it swapped."""
        with self._lock:
            if self.current is not None and self.current.version == version:
                return False
            loaded = LoadedModel.load(version, self.resolve(version))
            loaded.warm()
            self.current = loaded  # the flip: one reference assignment
            log.info("serving %s", version)
            return True
