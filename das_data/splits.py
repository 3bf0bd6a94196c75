"""Split, caps and corpus: the same rules for every domain the suite builds.

Task examples carry a grouping key (the movie for a review, the licence key for a rule, the article or
term itself otherwise); whole groups go to the test side, stratified by label, in an order fixed by
sha256(seed, group). The corpus never holds a document of a test group, nor any document that equals
or contains a test text. Caps then pick at most `MAX_TRAIN` / `MAX_TEST` examples, balanced across
labels (`cap_balanced`, which `das eval` uses too), and at most `MAX_CORPUS` documents.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from das_formats.corpus import MAX_DOCUMENT_CHARS
from das_formats.jsonl import is_json_object

from .domain_folder import MAX_TEST, MAX_TRAIN, DomainError
from .text import clean, rank, words

SEED = 13
TEST_FRACTION = 0.2
MAX_CORPUS = 20_000
SCRUB_MIN_WORDS = 8  # test texts this long are also searched for inside corpus documents


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
        groups = sorted(strata[label], key=lambda g: (rank(seed, "split", g), g))
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


class Labeled(Protocol):
    text: str
    label: str


L = TypeVar("L", bound=Labeled)


def cap_balanced(items: Sequence[L], cap: int, seed: int, tag: str) -> list[L]:
    """At most `cap` items, balanced across labels (water-filling), each label's first in sha256(seed, tag, text)
    order; the result keeps the input order. The one cap of the project: the suite's builder caps its splits
    with it, and `das eval` the end tasks it scores."""
    if len(items) <= cap:
        return list(items)
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_label[item.label].append(index)
    quota = balanced_quota({k: len(v) for k, v in by_label.items()}, cap)
    picked: list[int] = []
    for label, rows in by_label.items():
        picked += sorted(rows, key=lambda i: (rank(seed, tag, items[i].text), i))[: quota[label]]
    return [items[i] for i in sorted(picked)]


def in_fixed_order(items: Sequence[L], seed: int, tag: str) -> list[L]:
    """The items in sha256(seed, tag, "order", text) order: a built split's order, independent of the sources'."""
    return sorted(items, key=lambda i: (rank(seed, tag, "order", i.text), i.text))


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
    test = in_fixed_order(cap_balanced([i for i in test_pool if i.label in labels], max_test, seed, "test"),
                          seed, "test")
    train = in_fixed_order(cap_balanced([i for i in train_pool if i.label in labels], max_train, seed, "train"),
                           seed, "train")

    seen: set[str] = set()
    candidates = []  # a line that is a JSON object would make read_corpus take the corpus for JSONL: left out
    for doc in raw.docs:
        text = clean(doc.text)
        if (text and words(text) >= raw.min_corpus_words and len(text) <= MAX_DOCUMENT_CHARS and text not in seen
                and not any(g in test_groups for g in doc.groups) and not is_json_object(text)):
            seen.add(text)
            candidates.append(text)
    corpus, scrubbed = scrub_corpus(candidates, (i.text for i in test))
    capped = len(corpus) > max_corpus
    if capped:
        keep = set(sorted(range(len(corpus)), key=lambda i: (rank(seed, "corpus", corpus[i]), i))[:max_corpus])
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
