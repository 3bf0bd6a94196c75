"""Exported ONNX graphs of served versions, cached on local disk by the digest of the weights they come from.

`OnnxCache.graphs(folder, on_ready)` is the folder of a version's ready graphs (their parity check passed), or None
after starting one export per digest in a child process at nice 19 (das_engine.onnx_export: exporting is Python
tracing that would hold the serving process's GIL for seconds); `on_ready(graphs)` runs from a thread once it
passed. Graphs whose parity check failed are remembered and never served: that version stays on torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from das_engine.onnx_export import EXPORTER, GRAPH, HEAD_GRAPH, PARITY
from das_engine.spawn_ranks import die_with_parent
from das_formats.fingerprint import sha256_file
from das_formats.layout import MANIFEST, is_weight_file

log = logging.getLogger(__name__)
EXPORT_TIME_LIMIT_S = 1800.0


def weights_digest(folder: Path) -> str:
    """What a graph of `folder` depends on: its config and weight files (their digests from the version's
    manifest; hashed here when the folder has none) and the exporter."""
    files: dict[str, str] = {}
    manifest = folder / MANIFEST
    if manifest.is_file():
        files = json.loads(manifest.read_text("utf-8")).get("files") or {}
    names = sorted(p.name for p in folder.iterdir() if p.name == "config.json" or is_weight_file(p.name))
    parts = {name: files.get(name) or sha256_file(folder / name) for name in names}
    return hashlib.sha256(json.dumps([EXPORTER, parts], sort_keys=True).encode()).hexdigest()


class OnnxCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._running: dict[str, list[Callable[[Path], None]]] = {}  # digest -> who waits for it

    def entry(self, folder: Path) -> Path:
        """Where the graphs of `folder`'s weights live (its weights' digest, taken once per call)."""
        return self.root / weights_digest(folder)[:32]

    @staticmethod
    def parity(entry: Path) -> dict | None:
        """The parity record of an entry, or None when none was exported (or the record is unreadable)."""
        try:
            return json.loads((entry / PARITY).read_text("utf-8"))
        except (OSError, ValueError):
            return None

    @classmethod
    def ready(cls, entry: Path) -> Path | None:
        """The entry when its graphs may serve: exported, and their parity check passed."""
        record = cls.parity(entry)
        ok = record is not None and record.get("ok") is True
        return entry if ok and (entry / GRAPH).is_file() and (entry / HEAD_GRAPH).is_file() else None

    def graphs(self, folder: Path, on_ready: Callable[[Path], None]) -> Path | None:
        """The graphs to serve `folder` with when they are ready; otherwise None, and an export starts in the background
        unless one was made (passed or not) or is running: `on_ready(graphs)` runs once its graphs passed their parity
        check."""
        entry = self.entry(folder)
        if (graphs := self.ready(entry)) is not None:
            return graphs
        with self._lock:
            if (entry / PARITY).is_file():  # exported: failed its parity check, or finished since ready() looked
                return self.ready(entry)
            if entry.name in self._running:
                self._running[entry.name].append(on_ready)
                return None
            self._running[entry.name] = [on_ready]
        threading.Thread(target=self._export, args=(folder, entry), name=f"das-onnx-{entry.name[:8]}",
                         daemon=True).start()
        return None

    def _export(self, folder: Path, entry: Path) -> None:
        if entry.exists():  # graphs without their parity record: not an export's (it renames both in at once)
            shutil.rmtree(entry, ignore_errors=True)
        try:
            done = subprocess.run([sys.executable, "-m", "das_engine.onnx_export", str(folder), str(entry)],
                                  capture_output=True, text=True, timeout=EXPORT_TIME_LIMIT_S,
                                  preexec_fn=die_with_parent if sys.platform == "linux" else None)
            if done.returncode != 0:
                log.warning("the ONNX export of %s failed (exit %s); torch serves it: %s", folder, done.returncode,
                            done.stderr.strip()[-600:])
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning("the ONNX export of %s failed; torch serves it: %s", folder, err)
        with self._lock:
            waiting = self._running.pop(entry.name, [])
        graphs = self.ready(entry)
        if graphs is None:
            record = self.parity(entry)
            if record is not None:
                log.warning("the ONNX graph of %s failed its parity check (%s); torch serves it", folder, record)
            return
        for on_ready in waiting:
            on_ready(graphs)
