"""A version's files fetched and checked in a process of its own: what a hot swap does before it builds the version.

Hashing a version (440 MB at roberta-base shape) or fetching it from an object store is work the serving process
should not do beside the requests it answers. `checked_folder` runs `ModelStore.model_dir` (fetch into the cache,
check every sha256) in a child process at the lowest CPU priority: it takes no turn of the serving process's GIL, only
the CPU that the threads answering requests leave idle, and a crash or a hang there fails the swap, not the server.
The checked files are then in the page cache, and the serving process maps the safetensors from there (building
and warming roberta-base's shape from them, between batches: 0.34-0.43 s under load, docs/performance.md).

The child reopens the store from what `ModelStore.open` was given (`ModelStore.opened_with`, sent on stdin: storage
options may hold credentials) and answers one JSON line: the folder, or the store error it met, which comes back to
the caller as the same class with the same message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .store import CorruptVersion, ModelStore, StoreError, VersionNotFound

# the child runs at nice 19 from its start (Python's own start and imports included) where `nice` exists
_NICE = [shutil.which("nice"), "-n", "19"] if shutil.which("nice") else []
_ERRORS: dict[str, type[StoreError]] = {cls.__name__: cls for cls in (CorruptVersion, VersionNotFound, StoreError)}


def checked_folder(store: ModelStore, version: str, timeout_s: float) -> Path:
    """`store.model_dir(version)` (fetched, every file checked against its digest), run in a child process at nice
    19. Raises what model_dir raises (CorruptVersion, VersionNotFound, StoreError), or StoreError when the child
    died or ran past `timeout_s`."""
    if store.opened_with is None:
        raise StoreError("checked_folder needs a store made by ModelStore.open (the child reopens it)")
    request = json.dumps({"store": store.opened_with, "version": version})
    try:
        done = subprocess.run([*_NICE, sys.executable, "-m", "model_store.checking"], input=request,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise StoreError(f"checking the files of {version} took over {timeout_s:.0f} s; it was stopped") from None
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (ValueError, IndexError):
        last = done.stderr.strip().splitlines()[-1:] or ["no message"]  # a traceback's last line: the error
        raise StoreError(f"checking the files of {version} failed: its process exited with code {done.returncode} "
                         f"({last[0][-400:]})") from None
    if "folder" in answer:
        return Path(answer["folder"])
    error = _ERRORS.get(answer.get("error"), StoreError)
    if error is CorruptVersion:
        raise CorruptVersion(answer["message"], answer.get("reason"))
    raise error(answer["message"])


def _answer(request: dict) -> dict:
    opened = request["store"]
    store = ModelStore.open(opened["location"], redis_url=opened["redis_url"],
                            storage_options=opened["storage_options"], cache_dir=opened["cache_dir"],
                            lock_timeout_s=opened["lock_timeout_s"])
    try:
        return {"folder": str(store.model_dir(request["version"]))}
    except StoreError as err:
        return {"error": type(err).__name__, "message": str(err), "reason": getattr(err, "reason", None)}
    except OSError as err:  # an unreadable file or an unreachable object store
        return {"error": "StoreError", "message": f"the files of {request['version']} cannot be read: {err}"}


def main() -> None:
    if os.nice(0) < 19:  # started without `nice`
        try:
            os.nice(19 - os.nice(0))
        except OSError:
            pass
    print(json.dumps(_answer(json.loads(sys.stdin.read()))), flush=True)


if __name__ == "__main__":
    main()
