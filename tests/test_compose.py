"""The deployment files (docker-compose.yml, Dockerfile) agree with the real `das` CLI. No Docker needed."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from das.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def dockerfile_cmd() -> list[str]:
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1, "the Dockerfile needs exactly one CMD line"
    return json.loads(lines[0].removeprefix("CMD "))


def check_against_cli(argv: list[str], where: str) -> None:
    """`argv` must be `das <subcommand> [--option value ...]` with a subcommand and options the CLI has."""
    assert argv and argv[0] == "das", f"{where}: the program must be `das`, got {argv!r}"
    group = typer.main.get_command(app)
    sub = argv[1] if len(argv) > 1 else None
    assert sub in group.commands, f"{where}: `das {sub}` is not a subcommand of the CLI (has: {sorted(group.commands)})"
    known = {opt for param in group.commands[sub].params for opt in (*param.opts, *param.secondary_opts)}
    for token in argv[2:]:
        option = token.split("=", 1)[0]
        if option.startswith("--"):
            assert option in known, f"{where}: `das {sub}` has no option {option} (has: {sorted(known)})"


def test_services_healthchecks_and_dependencies():
    assert {"redis", "api", "worker"} <= SERVICES.keys()
    for name in ("redis", "api", "worker"):
        assert SERVICES[name].get("healthcheck", {}).get("test"), f"service {name} has no healthcheck"
    assert SERVICES["api"]["deploy"]["replicas"] == 2
    for name in ("api", "worker"):
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_api_and_worker_share_a_declared_named_volume():
    def named_volumes(service: str) -> set[str]:
        return {mount.split(":")[0] for mount in SERVICES[service].get("volumes", [])}

    shared = named_volumes("api") & named_volumes("worker")
    assert shared, "api and worker share no volume"
    assert shared <= set(COMPOSE.get("volumes") or {}), f"volumes {shared} are not declared at the top level"


@pytest.mark.parametrize("where", ["compose api", "compose worker", "Dockerfile CMD", "worker healthcheck"])
def test_commands_exist_in_the_cli(where: str):
    if where == "Dockerfile CMD":
        argv = dockerfile_cmd()
    elif where == "worker healthcheck":
        test = SERVICES["worker"]["healthcheck"]["test"]
        assert test[0] == "CMD", f"{where}: exec form expected, got {test!r}"
        argv = test[1:]
    else:
        command = SERVICES[where.split()[1]]["command"]
        argv = shlex.split(command) if isinstance(command, str) else list(command)
    check_against_cli(argv, where)


def test_the_image_copies_every_package():
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    missing = [p for p in packages if f"COPY {p}/ {p}/" not in dockerfile]
    assert not missing, f"the Dockerfile does not copy {missing}"


def test_the_worker_healthcheck_asks_celery():
    """Not only Redis: `das worker --ping` asks this container's Celery worker (tests/test_worker_health.py runs it
    against a real worker)."""
    assert SERVICES["worker"]["healthcheck"]["test"] == ["CMD", "das", "worker", "--ping"]


def test_the_image_installs_the_client():
    """`import das_client` works in the image: client/ is copied and installed with the package, from the lock."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = dockerfile.splitlines()
    copy = lines.index("COPY client/ client/")
    install = next(i for i, line in enumerate(lines) if line.startswith("RUN pip install") and " -e . " in line)
    assert copy < install, "client/ is copied after the install that needs it"
    assert "./client" in lines[install].split(), lines[install]
    assert "--no-deps" in lines[install], "the client's dependencies come from the lock, not from a resolver"
