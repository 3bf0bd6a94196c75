"""requirements/ is the lock every install of this repository uses (docs/dependencies.md): it must agree with the
ranges pyproject.toml declares, pin everything with hashes, and be what the Makefile and the Dockerfile install."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"


def locked(name: str) -> dict[str, tuple[Version, frozenset[str]]]:
    """{package: (version, its sha256 hashes)} of one lock file; every entry must be `name==version` with hashes."""
    entries: dict[str, tuple[Version, frozenset[str]]] = {}
    text = (LOCKS / name).read_text()
    for block in re.split(r"\n(?=\S)", text):
        if not block.strip() or block.lstrip().startswith("#"):
            continue
        first = block.split("\\")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", first)
        assert match, f"{name}: {first!r} is not pinned as name==version"
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
        assert hashes, f"{name}: {first} has no sha256 hash"
        entries[canonicalize_name(match[1])] = (Version(match[2]), hashes)
    return entries


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    """The requirements pyproject.toml (with `extras`, self-references followed) and client/pyproject.toml declare."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["project"]["dependencies"] + client["dependencies"]]
    requirements += [Requirement(r) for r in project["build-system"]["requires"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        seen.add(extra)
        for r in map(Requirement, project["project"]["optional-dependencies"][extra]):
            if canonicalize_name(r.name) == canonicalize_name(project["project"]["name"]):
                pending += [e for e in r.extras if e not in seen]
            else:
                requirements.append(r)
    return requirements


@pytest.mark.parametrize("lock,extras", [("serve.txt", ("s3",)), ("dev.txt", ("dev",))])
def test_every_declared_requirement_is_locked_within_its_range(lock, extras):
    pins = locked(lock)
    torch = (LOCKS / "torch.txt").read_text().split()
    for requirement in declared(extras):
        name = canonicalize_name(requirement.name)
        if name == "torch":  # installed first from its own file: the wheel depends on the machine
            assert str(requirement) in torch and name not in pins
            continue
        assert name in pins, f"{requirement} is declared but not in requirements/{lock}: run `make lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), \
            f"requirements/{lock} pins {name}=={version}, outside {requirement}: run `make lock`"


def test_the_serving_lock_is_the_dev_lock_cut_down():
    serve, dev = locked("serve.txt"), locked("dev.txt")
    assert serve.keys() < dev.keys()
    assert {name: serve[name] for name in serve} == {name: dev[name] for name in serve}


def test_every_install_uses_the_lock():
    makefile, dockerfile = (ROOT / "Makefile").read_text(), (ROOT / "Dockerfile").read_text()
    for lock in ("serve", "dev"):
        assert f"$(call locked_install,requirements/{lock}.txt)" in makefile
    assert "--require-hashes --no-deps -r $(1)" in makefile
    assert "--require-hashes --no-deps -r requirements/serve.txt" in dockerfile
    assert "-r requirements/torch.txt" in dockerfile
    locked_install = makefile.split("define locked_install", 1)[1].split("endef", 1)[0]
    for recipe in (locked_install, dockerfile):
        assert ".[" not in recipe, "an install that resolves the project's extras instead of taking the lock"
