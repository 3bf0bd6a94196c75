"""The evaluation's own input files: a results.json given to `das eval-merge` (one-field edits of a real one), and
an evaluation folder's run.json and stage files given back to `das eval`. Every problem is one line that names the
file (and the field), says what to do, and is never a traceback."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from das.cli import app
from das_data.local_corpora import licence_documents
from das_eval import EvalError, merge_results
from das_eval.files import read_json

REAL = Path(__file__).resolve().parent.parent / "bench" / "results" / "eval-embedded-results.json"
runner = CliRunner()


def _invoke(args: list[str]):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"a traceback: {result.exception!r}\n{result.output}"
    return result


def _refused(result, *says: str) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "error: " in result.output, result.output
    text = " ".join(result.output[result.output.index("error: "):].split())  # the error, unwrapped (rich wraps)
    for part in says:
        assert part in text, (part, text)
    return text


@pytest.fixture(scope="module")
def real() -> dict:
    return json.loads(REAL.read_text(encoding="utf-8"))


def _edit(document: dict, path: str, value=None, *, delete: bool = False) -> dict:
    """A deep copy with one field set (or deleted); `path` is dotted, list indices as numbers."""
    copy = json.loads(json.dumps(document))
    *parents, last = path.split(".")
    node = copy
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if delete:
        del node[key]
    elif isinstance(node, list) and key == len(node):
        node.append(value)
    else:
        node[key] = value
    return copy


def test_the_real_results_json_merges(real, tmp_path):
    result = _invoke(["eval-merge", REAL, "--out", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "out" / "results.json").read_text())
    assert merged["scores"] == real["scores"] and merged["summary"] == real["summary"]


# one-field edits of a real results.json: (path, value or DELETE, what the message must say after the file's name)
DELETE = object()
EDITS = [
    ("domains", DELETE, "domains is missing"),
    ("domains", "movies", "domains is a string, expected a list"),
    ("domains.1", 7, "domains.1 is the number 7, expected a string"),
    ("domains.3", "movies", "domains is"),  # a name twice
    ("families", ["probe/macro_f1", "probe/nope"], "families.1 is 'probe/nope'"),
    ("seeds", [0, 1, -1], "seeds.2 is -1, expected a seed within"),
    ("seeds", [0, 1, 1.5], "seeds.2 is the number 1.5, expected an integer"),
    ("seeds", [0, 1], "scores.base has seeds ['0', '1', '2'], expected ['0', '1']"),
    ("seeds", [], "seeds is [], expected a non-empty list"),
    ("format", "something", "format is \"something\", expected 'das-eval'"),
    ("format_version", 2, "format_version is 2; this `das` reads version 1"),
    ("settings", [], "settings is a list, expected an object"),
    ("settings.train", DELETE, "settings.train is missing"),
    ("settings.train.lr", "fast", "settings.train.lr is a string, expected a finite number"),
    ("settings.train.lr", float("nan"), "settings.train.lr is the number nan, expected a finite number"),
    ("settings.train.steps", -5, "settings.train is not a valid DASConfig"),
    ("settings.train.seed", 0, "settings.train.seed is not a DASConfig setting"),
    ("settings.train.lr", DELETE, "methods.ncl.config.lr is 0.0005, but settings.train, the method and the first "
                                  "seed give 0.0001"),  # DASConfig's default
    ("settings.scoring.finetune", True, "settings.scoring has settings"),  # without the fine-tuning settings
    ("families.2", "finetune/macro_f1", "families are ['probe/macro_f1', 'probe/accuracy', 'finetune/macro_f1'], "
                                        "but settings.scoring gives ['probe/macro_f1', 'probe/accuracy']"),
    ("settings.domains.0.name", "books", "settings.domains names ['books', 'news', 'legal', 'clinical']"),
    ("stages", ["base", "movies"], "stages is"),
    ("methods", {}, "methods is empty"),
    ("methods.das.kind", "ncl", "methods.das.kind is 'ncl', but the method's name gives 'das'"),
    ("methods.das.folder", "../elsewhere", "methods.das.folder is '../elsewhere', expected 'das'"),
    ("methods.ncl.overrides", {}, "methods.ncl.overrides is {}, but the method's name gives {\"softmask\": false}"),
    ("methods.base.config", {"lr": 0.1}, "methods.base.config is an object, expected null"),
    ("methods.das.config.lr", 0.5, "methods.das.config.lr is 0.5, but settings.train"),
    ("scores.das", DELETE, "scores has methods ['base', 'ncl'], expected ['base', 'ncl', 'das']"),
    ("scores.das.0.probe/macro_f1.2", [70.0], "scores.das.0.probe/macro_f1 row 2 has 1 value(s), expected 4"),
    ("scores.das.0.probe/macro_f1.4", DELETE, "scores.das.0.probe/macro_f1 has 4 row(s), expected 5"),
    ("scores.das.0.probe/macro_f1.2.1", "93.3", "scores.das.0.probe/macro_f1 row 2 value 1 is a string"),
    ("scores.das.0.probe/macro_f1.2.1", float("nan"), "row 2 value 1 is the number nan, expected a finite number"),
    ("scores.das.0.probe/macro_f1.2.1", 930.0, "row 2 value 1 is 930.0, expected a number within 0..100"),
    ("scores.das.0.probe/macro_f1.2.1", 10**400, "row 2 value 1 is a number of 401 digits"),
    ("summary.das.probe/macro_f1.final_average.n", 10**400, "summary.das.probe/macro_f1.final_average.n is the "
                                                             "number 1000"),
    ("scores.das.0.mlm_loss.1.0", -1.0, "scores.das.0.mlm_loss row 1 value 0 is -1.0"),
    ("scores.das.0.probe/macro_f1.2.1", 93.0, "the summary does not match the scores"),  # a plain number edit
    ("scores.base.0.probe/macro_f1.3.0", 1.0, "scores.base.0.probe/macro_f1 has rows that differ"),
    ("scores.das.3", {}, "scores.das has seeds ['0', '1', '2', '3'], expected ['0', '1', '2']"),
    ("summary.das.probe/macro_f1.final_average.mean", 99.0, "summary.das.probe/macro_f1.final_average.mean is the "
                                                             "number 99.0, but the scores give"),
    ("summary.ncl.mean_matrix", DELETE, "summary.ncl.mean_matrix is missing"),
    ("cost.base", {"median_step_s": 1.0}, "cost.base is the cost of a method this run did not train"),
    ("cost.das.median_step_s", "slow", "cost.das.median_step_s is a string, expected a finite number"),
    ("cost.das.stage_wall_time_s.n", 0, "cost.das.stage_wall_time_s.mean is the number"),
    ("commands.0.argv", "das eval", "commands.0.argv is a string, expected a list"),
    ("commands.0.argv.1", 5, "commands.0.argv.1 is the number 5, expected a string"),
    ("commands", {}, "commands is an object, expected a list"),
    ("date", None, "date is null, expected a string"),
    ("base", DELETE, "base is missing"),
    ("domain_sizes.news.train", -3, "domain_sizes.news.train is -3, expected a count >= 0"),
]


@pytest.mark.parametrize("path,value,says", EDITS, ids=[f"{p}={v if v is not DELETE else 'DELETE'}"
                                                        for p, v, _ in EDITS])
def test_a_one_field_edit_is_refused_naming_the_file_and_field(real, tmp_path, path, value, says):
    edited = tmp_path / "edited.json"
    document = _edit(real, path, delete=True) if value is DELETE else _edit(real, path, value)
    edited.write_text(json.dumps(document))
    _refused(_invoke(["eval-merge", edited, "--out", tmp_path / "out"]), f"{edited}: ", says)
    for files in ([edited, REAL], [REAL, edited]):  # either side of a merge: refused, naming it
        _refused(_invoke(["eval-merge", *files, "--out", tmp_path / "out"]), str(edited))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,says", [
    (b"", "not valid JSON (Expecting value at line 1 column 1)"),
    (b"{\"domains\": [", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8 (invalid byte at offset 0)"),
    (b"[" * 100000 + b"]" * 100000, "nests 100000 levels deep"),
    (b"[]", "the file is a list, expected an object"),
    (b"NaN", "the file is the number nan, expected an object"),
    (b'{"seeds": [' + b"1" * 5000 + b"]}", "not readable JSON (Exceeds the limit (4300 digits)"),
])
def test_a_file_that_is_not_a_results_json(tmp_path, content, says):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    _refused(_invoke(["eval-merge", bad, "--out", tmp_path / "out"]), str(bad), says)


def test_a_folder_or_a_missing_file_or_a_bad_out(tmp_path):
    _refused(_invoke(["eval-merge", tmp_path, "--out", tmp_path / "o"]), f"{tmp_path} is not a file (a folder)")
    _refused(_invoke(["eval-merge", tmp_path / "no.json", "--out", tmp_path / "o"]), "no.json is not a file (missing)")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    _refused(_invoke(["eval-merge", REAL, "--out", blocker]), f"{blocker} is a file; --out names a folder")
    _refused(_invoke(["eval-merge", REAL, "--out", blocker / "sub"]), f"{blocker / 'sub'}: Not a directory")
    _refused(_invoke(["eval-merge", REAL, "--seeds", str(10**12), "--out", tmp_path / "o"]), "give 1..3")


def test_runs_of_another_evaluation_are_named_by_their_files(real, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_edit(real, "settings.train.lr", 0.001)))
    _refused(_invoke(["eval-merge", REAL, other, "--out", tmp_path / "o"]),
             f"{other} was made with other settings than {REAL}", "settings.train.lr: 0.0005 -> 0.001")
    with pytest.raises(EvalError, match=r"^results 2 was made with other settings than results 1"):
        merge_results([real, json.loads(other.read_text())])


def test_the_fields_write_reports_reads_are_refused_in_the_api_too(real):
    """merge_results itself checks: a caller of the library gets the same EvalError, never a KeyError."""
    bad = _edit(real, "summary.das.probe/macro_f1", delete=True)
    with pytest.raises(EvalError, match=r"^a\.json: summary\.das\.probe/macro_f1 is missing"):
        merge_results([bad], names=["a.json"])
    finite = _edit(real, "scores.ncl.1.mlm_loss.2.2", math.inf)
    with pytest.raises(EvalError, match=r"scores\.ncl\.1\.mlm_loss row 2 value 2 is the number inf"):
        merge_results([real, finite], names=["a.json", "b.json"])


def test_the_one_reader_names_the_file_and_what_to_do(tmp_path):
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(EvalError, match=r"x\.json is not a thing \(not valid JSON \(.* line 1 column 2\)\); do this"):
        read_json(tmp_path / "x.json", what="a thing", fix="do this")
    assert read_json(REAL, what="a results.json", fix="-")["format"] == "das-eval"


# ---------------------------------------------------------------------------------------------
# `das eval` given back its own folder with a damaged file

SMALL = ["--steps", "2", "--batch-size", "2", "--max-length", "32", "--importance-samples", "2", "--set",
         "importance_batch_size=2", "--max-train", "16", "--max-test", "16", "--seeds", "1"]


def write_tiny_domain(folder: Path) -> Path:
    """A small real domain: licence paragraphs, labelled by whether they are written in capitals."""
    def shouting(text: str) -> str:
        letters = [c for c in text if c.isalpha()]
        return "capitals" if sum(c.isupper() for c in letters) > 0.6 * len(letters) else "plain"

    docs = licence_documents()
    by_label: dict[str, list[str]] = {}
    for text in docs:
        by_label.setdefault(shouting(text), []).append(text)
    train = [(t, label) for label, texts in by_label.items() for t in texts[:8]]
    test = [(t, label) for label, texts in by_label.items() for t in texts[8:12]]
    held = {t for t, _ in test}
    folder.mkdir(parents=True)
    (folder / "corpus.txt").write_text("".join(d + "\n" for d in docs[:80] if d not in held), encoding="utf-8")
    for split, rows in (("train", train), ("test", test)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "label": label}) + "\n"
                                                       for t, label in rows), encoding="utf-8")
    meta = {"name": folder.name, "source": "tests", "licence": "as the texts'", "labels": sorted(by_label)}
    (folder / "domain.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, bert_dir) -> tuple[Path, list[str]]:
    """One finished tiny evaluation (base and ncl, one domain, one seed); tests copy it before damaging it."""
    root = tmp_path_factory.mktemp("eval-inputs")
    domain = write_tiny_domain(root / "legal")
    out = root / "out"
    args = ["eval", domain, "--out", out, "--methods", "base,ncl", "--base", bert_dir, *SMALL]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    return out, [str(a) for a in args]


def _copy(evaluated, tmp_path) -> tuple[Path, list[str]]:
    out, args = evaluated
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return copy, [str(copy) if a == str(out) else a for a in args]


@pytest.mark.parametrize("relative,content,says", [
    ("runs/base/seed-0/stage-0-base/scores.json", "{broken", "is not a stage's scores file (not valid JSON"),
    ("runs/ncl/seed-0/stage-1-legal/scores.json", "[1, 2]", "the file is a list, expected an object"),
    ("runs/ncl/seed-0/stage-1-legal/scores.json", '{"scores": {}}', "scores.legal is missing"),
    ("runs/ncl/seed-0/stage-1-legal/scores.json", b"\xff\xfe", "not UTF-8"),
])
def test_a_damaged_stage_file_is_named_with_what_to_do(evaluated, tmp_path, relative, content, says):
    out, args = _copy(evaluated, tmp_path)
    path = out / relative
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    _refused(_invoke(args), str(path), says, f"remove the stage folder {path.parent} and rerun the same command")
    shutil.rmtree(path.parent)  # what the message says to do: the stage is recomputed
    assert _invoke(args).exit_code == 0
    assert json.loads(path.read_text())["scores"]["legal"]["mlm_loss"] > 0


def test_a_diverged_stage_is_not_sent_round_in_circles(evaluated, tmp_path):
    """A NaN loss is what the model gave: recomputing the stage would give it again."""
    out, args = _copy(evaluated, tmp_path)
    path = out / "runs" / "ncl" / "seed-0" / "stage-1-legal" / "scores.json"
    record = json.loads(path.read_text())
    record["scores"]["legal"]["mlm_loss"] = math.nan
    path.write_text(json.dumps(record))
    text = _refused(_invoke(args), f"{path}: scores.legal.mlm_loss is nan: the stage's model diverged",
                    "into another --out with other settings")
    assert "remove the stage folder" not in text


@pytest.mark.parametrize("content,says", [
    ("{broken", "is not an evaluation's run.json (not valid JSON"),
    ("[]", "run.json holds no JSON object"),
    ('{"settings": {}}', "run.json lacks its 'commands' list"),
])
def test_a_damaged_run_json_is_named_with_what_to_do(evaluated, tmp_path, content, says):
    out, args = _copy(evaluated, tmp_path)
    (out / "run.json").write_text(content)
    _refused(_invoke(args), str(out / "run.json"), says, "restore it, or choose another --out")


def test_a_damaged_trainer_file_is_named_with_what_to_do(evaluated, tmp_path):
    out, args = _copy(evaluated, tmp_path)
    stage = out / "runs" / "ncl" / "seed-0" / "stage-1-legal"
    (stage / "scores.json").unlink()  # the stage is scored again, and the trainer reads its finished run
    (stage / "train_metrics.json").write_text("{broken")
    _refused(_invoke(args), f"{stage}: a file the trainer left there", f"remove {stage} and rerun the same command")


def test_bad_folders_are_refused_before_any_stage_runs(evaluated, tmp_path, bert_dir):
    out, args = _copy(evaluated, tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    under = [str(blocker / "sub") if a == str(out) else a for a in args]
    _refused(_invoke(under), f"cannot make the folder {blocker / 'sub'}", "choose another --out")
    before = sorted(out.rglob("*"))
    long_method = [a if a != "base,ncl" else "ncl:" + ",".join(["lr=0.001"] * 12) for a in args]
    _refused(_invoke(long_method), "its folder name would have", "at most 100")
    assert sorted(out.rglob("*")) == before  # nothing recorded, nothing run
