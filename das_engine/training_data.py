"""What a DAS run trains on: the domain's packed blocks, the replay blocks drawn from the lineage's earlier
corpora, and (for merge_auto) the validation documents kept out of both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from das_formats.config import DASConfig, corpus_problem
from das_formats.corpus import split_by_hash

from .data import PackedCorpus, TokenIds, pack_corpus
from .token_cache import TokenCache
from .units import LMKind

VALIDATION_SALT, VALIDATION_FRACTION, VALIDATION_MAX = "das-merge-validation", 0.05, 100


@dataclass
class TrainingData:
    """What a run trains on: the domain's blocks, the replay blocks (drawn `replay_rows` per batch), and, for
    merge_auto, the validation documents kept out of both (the new domain's, and each earlier corpus')."""

    packed: PackedCorpus
    replay: PackedCorpus | None = None
    replay_rows: int = 0
    replay_documents: dict[str, int] = field(default_factory=dict)  # earlier corpus -> documents drawn from
    validation_new: list[str] = field(default_factory=list)
    validation_old: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def prepare(cls, documents: list[str], replay: dict[str, list[str]], tokenizer, config: DASConfig,
                token_cache: Path | None = None, kind: LMKind = "masked") -> TrainingData:
        """`token_cache`: where each earlier corpus's token ids are kept (das_engine.token_cache), so that a lineage's
        corpora are tokenised once; the new domain's own documents are tokenised here. `kind`: the model's, which
        says how blocks are packed (data.pack_corpus)."""
        validation_new, validation_old = [], {}
        if config.merge_auto:  # the same documents are kept out by every run of a lineage (a hash, not an order)
            problem = corpus_problem(config, documents)
            if problem:
                raise ValueError(problem)
            validation_new, documents = split_by_hash(documents, VALIDATION_SALT, VALIDATION_FRACTION, VALIDATION_MAX)
            split = {name: split_by_hash(docs, VALIDATION_SALT, VALIDATION_FRACTION, VALIDATION_MAX)
                     for name, docs in replay.items()}
            validation_old = {name: held for name, (held, _) in split.items()}
            replay = {name: rest for name, (_, rest) in split.items() if rest}
        rows = replay_rows(config, bool(replay))
        packed_replay = None
        if rows:
            cache = TokenCache(token_cache, tokenizer) if token_cache is not None else None
            ids = TokenIds.concat([cache.token_ids(docs) for docs in replay.values()]) if cache else None
            packed_replay = pack_corpus([d for docs in replay.values() for d in docs], tokenizer, config.max_length,
                                        ids, kind=kind)
        return cls(pack_corpus(documents, tokenizer, config.max_length, kind=kind), packed_replay, rows,
                   {name: len(docs) for name, docs in replay.items()} if rows else {}, validation_new, validation_old)


def replay_rows(config: DASConfig, available: bool) -> int:
    """Rows of each batch drawn from the earlier corpora: round(replay_fraction * batch_size), leaving at least one
    row of the new domain; 0 with nothing to draw from."""
    if not available or config.replay_fraction == 0:
        return 0
    return min(config.batch_size - 1, round(config.replay_fraction * config.batch_size))
