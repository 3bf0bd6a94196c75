"""Write requirements/ from a virtual environment whose tests passed (`make lock`, after `make test-latest`).

The lock is what was tested, not a second resolution that may pick newer releases: every pin is
constrained to the version installed in the tested environment, and the script fails if the dev lock
and that environment differ in any package. uv resolves (in seconds; pip's resolver backtracks for
minutes over boto versions) and adds the sha256 of every file the index has for each pinned version.

Files written:
- requirements/serve.txt  what `make run` and the image install: the package with its s3 extra (a shared
                          store on S3) and its client, no test tools;
- requirements/dev.txt    what `make test` installs: serve plus the dev extra (test, lint, s3 tools);
- requirements/torch.txt  the torch pin alone, installed first and without hashes: which torch wheel
                          fits (CPU, CUDA, a local wheel folder) depends on the machine, not the lock.
The build backend (pyproject's build-system.requires) is locked too: the editable installs run without
build isolation, so they need nothing from the index.

usage: .venv-latest/bin/python scripts/lock.py --tested .venv-latest --uv .venv-tools/bin/uv
(run by `make lock`, which also hands uv pip's wheel folder as UV_FIND_LINKS)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "requirements"
SOURCES = [ROOT / "pyproject.toml", ROOT / "client" / "pyproject.toml"]
NOT_LOCKED = {"torch"}  # requirements/torch.txt
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def pins(text: str) -> dict[str, str]:
    """{canonical name: version} of every `name==version` line (pip freeze or a compiled lock)."""
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def tested_versions(venv: Path) -> dict[str, str]:
    """What is installed in the tested environment, editable project packages left out."""
    frozen = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable", "--all"],
                            check=True, capture_output=True, text=True).stdout
    return {name: version for name, version in pins(frozen).items() if name not in {"pip"}}


def torch_pin() -> str:
    dependencies = tomllib.loads(SOURCES[0].read_text())["project"]["dependencies"]
    [pin] = [d for d in dependencies if canonicalize_name(Requirement(d).name) == "torch"]
    return pin


def compile_lock(uv: Path, python: Path, out: Path, constraints: Path, build_requirements: Path,
                 extras: list[str]) -> None:
    """uv's resolution for `python` (the tested interpreter: its version and platform decide the markers)."""
    command = [str(uv), "pip", "compile", *map(str, SOURCES), str(build_requirements), "--constraints",
               str(constraints), "--generate-hashes", "--python", str(python), "--quiet",
               "--custom-compile-command", "make lock", "--output-file", str(out)]
    for extra in extras:
        command += ["--extra", extra]
    for name in sorted(NOT_LOCKED):
        command += ["--no-emit-package", name]
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tested", type=Path, required=True, help="the environment whose tests passed")
    parser.add_argument("--uv", type=Path, required=True, help="the uv executable")
    args = parser.parse_args()
    tested = tested_versions(args.tested)
    OUT.mkdir(exist_ok=True)
    # uv's "via" annotations name these inputs: a fixed place beside the tested environment keeps the lock's
    # text the same from one refresh to the next (a temporary folder would change every line that names it)
    inputs = Path(os.path.relpath(args.tested.absolute() / "lock-inputs", ROOT))
    (ROOT / inputs).mkdir(exist_ok=True)
    constraints, build = inputs / "tested-versions.txt", inputs / "build-system.txt"
    (ROOT / constraints).write_text("".join(f"{name}=={version}\n" for name, version in sorted(tested.items())))
    (ROOT / build).write_text("\n".join(tomllib.loads(SOURCES[0].read_text())["build-system"]["requires"]) + "\n")
    python = args.tested.absolute() / "bin" / "python"
    compile_lock(args.uv, python, OUT / "dev.txt", constraints, build, ["dev"])
    compile_lock(args.uv, python, OUT / "serve.txt", constraints, build, ["s3"])
    (OUT / "torch.txt").write_text(f"# the torch pin of pyproject.toml, installed before the hashed lock (make lock)\n"
                                   f"{torch_pin()}\n")
    locked = pins((OUT / "dev.txt").read_text())
    expected = {name: version for name, version in tested.items() if name not in NOT_LOCKED}
    if locked != expected:
        extra = {n: v for n, v in locked.items() if expected.get(n) != v}
        missing = {n: v for n, v in expected.items() if locked.get(n) != v}
        print(f"lock: requirements/dev.txt differs from {args.tested}: locked but not tested {extra}, "
              f"tested but not locked {missing}", file=sys.stderr)
        return 1
    print(f"lock: {len(locked)} packages pinned with hashes in requirements/dev.txt, "
          f"{len(pins((OUT / 'serve.txt').read_text()))} in serve.txt; torch: {torch_pin()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
