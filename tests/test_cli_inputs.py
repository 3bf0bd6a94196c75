"""Bad paths given to the `das` commands (a file where a folder goes, a folder where a file goes, a foreign folder
in the way): one line that names the path and says what to do, exit code 2, never a traceback, nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from das.cli import app
from das_data import domain_folder, domain_suite
from das_data.domain_folder import DomainError, Example, check_domain_target, read_domain, write_domain

runner = CliRunner()


def _refused(args: list, *says: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"a traceback: {result.exception!r}\n{result.output}"
    assert result.exit_code == 2 and "error: " in result.output, result.output
    text = " ".join(result.output[result.output.index("error: "):].split())  # unwrapped
    for part in says:
        assert part in text, (part, text)
    return text


@pytest.fixture
def no_fetching(monkeypatch):
    """A refusal must come before any wheel is fetched (a build takes minutes and the network)."""
    def fetch(*_args, **_kwargs):
        pytest.fail("a wheel was fetched before the output folder was checked")

    monkeypatch.setattr(domain_suite, "fetch_wheel", fetch)


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("the user's file\n")
    return path


def test_data_build_into_a_file_or_under_one(tmp_path, no_fetching):
    blocker = _a_file(tmp_path)
    _refused(["data", "build", blocker, "--only", "news"], f"{blocker} is a file, not a folder")
    _refused(["data", "build", blocker / "domains", "--only", "news"], f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "the user's file\n"


def test_data_build_over_a_file_or_a_foreign_folder_named_like_a_domain(tmp_path, no_fetching):
    out = tmp_path / "domains"
    out.mkdir()
    (out / "news").write_text("not a folder\n")
    _refused(["data", "build", out, "--only", "news"], f"{out / 'news'} is a file, not a domain folder",
             "remove it or choose another output folder")
    (out / "news").unlink()
    (out / "news").mkdir()
    (out / "news" / "thesis.tex").write_text("months of work\n")
    _refused(["data", "build", out, "--only", "news,legal"], f"{out / 'news'} exists and is not a domain folder",
             "thesis.tex")
    assert (out / "news" / "thesis.tex").read_text() == "months of work\n"
    (out / "news" / "thesis.tex").unlink()
    os.symlink(tmp_path, out / "legal")
    _refused(["data", "build", out, "--only", "legal"], f"{out / 'legal'} is a symbolic link")


def test_data_build_with_a_file_as_the_wheel_cache(tmp_path, no_fetching):
    cache = _a_file(tmp_path)
    _refused(["data", "build", tmp_path / "domains", "--only", "news", "--cache", cache],
             f"the wheel cache {cache} is a file", "choose another --cache")


def _write(folder: Path, word: str) -> Path:
    examples = [Example(f"{word} text number {i}", "ab"[i % 2]) for i in range(6)]
    return write_domain(folder, name=folder.name, corpus=[f"{word} corpus document {i}" for i in range(5)],
                        train=examples[:4], test=examples[4:], labels=["a", "b"], source="tests", licence="none",
                        notes={})


def test_a_domain_folder_is_replaced_and_nothing_else_is(tmp_path):
    folder = _write(tmp_path / "toy", "first")
    assert read_domain(folder).train[0].text == "first text number 0"
    _write(folder, "second")  # a domain folder is replaced as a whole
    assert read_domain(folder).train[0].text == "second text number 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temporary or old folder left
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(DomainError, match="exists and is not a domain folder .*notes.txt"):
        _write(folder, "third")
    assert read_domain(folder).train[0].text == "second text number 0"


def test_a_failed_write_is_a_domain_error_and_keeps_the_old_folder(tmp_path, monkeypatch):
    folder = _write(tmp_path / "toy", "first")
    real_rename = os.rename

    def rename(src, dst):
        if Path(dst) == folder and Path(src).name.startswith(".toy.tmp-"):  # the new folder, not the old one back
            raise OSError(28, "No space left on device", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(domain_folder.os, "rename", rename)
    with pytest.raises(DomainError, match=f"cannot write {folder}: No space left on device"):
        _write(folder, "second")
    assert read_domain(folder).train[0].text == "first text number 0"  # the old one is back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]
    check_domain_target(folder)  # and still a domain folder


def test_eval_merge_and_eval_refuse_their_paths_before_any_work(tmp_path):
    blocker = _a_file(tmp_path)
    real = Path(__file__).resolve().parent.parent / "bench" / "results" / "eval-embedded-results.json"
    _refused(["eval-merge", real, "--out", blocker / "out"], f"{blocker / 'out'}: Not a directory")
    _refused(["eval-merge", tmp_path, "--out", tmp_path / "out"], f"{tmp_path} is not a file (a folder)")
    _refused(["eval", blocker, "--out", tmp_path / "out"], f"{blocker} is a file; give a domain folder")


@pytest.mark.parametrize("args,says", [
    (["task", "add", "t", "{dir}", "--store", "{tmp}/store"], "{dir}: no such file"),
    (["task", "add", "t", "{tmp}/missing.jsonl", "--store", "{tmp}/store"], "missing.jsonl: no such file"),
    (["task", "add", "t", "{file}", "--eval", "{dir}", "--store", "{tmp}/store"], "{dir}: no such file"),
    (["task", "add", "t", "{binary}", "--store", "{tmp}/store"], "looks binary"),
    (["base", "build", "nope", "--out", "{tmp}/base"], "unknown base 'nope'"),
    (["base", "build", "minilm", "--out", "{file}"], "{file} already exists and is not an empty folder"),
])
def test_the_other_commands_check_their_paths(tmp_path, args, says):
    (tmp_path / "dir").mkdir()
    lines = "".join(json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) + "\n" for i in range(4))
    (tmp_path / "train.jsonl").write_text(lines)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\x00\x01")
    names = {"dir": tmp_path / "dir", "file": tmp_path / "train.jsonl", "binary": tmp_path / "bin.jsonl",
             "tmp": tmp_path}
    _refused([a.format(**names) for a in args], says.format(**names))


def _command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if hasattr(command, "commands"):  # a group (typer's own click)
            paths += _command_paths(command, (*prefix, name))
    return paths


def test_piped_help_shows_whole_option_names():
    """--help into a pipe or a file (no terminal) is as wide as it needs: no option name cut to `--prev-importa…`."""
    import typer

    from das.remote_cli import remote_app

    local = _command_paths(typer.main.get_command(app))
    remote = [("--url", "http://127.0.0.1:1", *path) for path in _command_paths(typer.main.get_command(remote_app))]
    assert len(local) > 25 and remote
    for path in [(), *local, *remote]:
        shown = CliRunner().invoke(app, [*path, "--help"])
        assert shown.exit_code == 0, (path, shown.output)
        assert "…" not in shown.output, (path, [line for line in shown.output.splitlines() if "…" in line])
