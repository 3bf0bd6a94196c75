"""What every stage is scored on, and how: each domain's corpus minus a fixed held-out slice (kept out
of training, scored by the model's own LM loss: MLM for a masked LM, next-token for a causal one) and its end task
capped for speed; a model's scores on all of them.

End tasks are scored by the one path the service's forgetting gate takes too
(`das_engine.endtask.probe_task` and `finetune_task`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from das_data.domain_folder import FILES, Domain, Example, read_domain
from das_data.splits import cap_balanced
from das_formats.corpus import read_corpus, split_by_hash
from das_formats.task_data import LabeledSet

from .files import LOSS_KINDS, LossKind
from .methods import EvalError
from .plan import EvalPlan, ScoringSettings

HELDOUT_SALT = "das-eval-heldout"
CAP_SEED, CAP_SALT = 0, "das-eval-cap"


@dataclass
class PreparedDomain:
    name: str
    domain: Domain
    training_documents: list[str]  # what the trainer sees
    heldout_documents: list[str]  # never trained on; scored by the held-out LM loss after every stage
    train: LabeledSet  # the end task, capped
    test: LabeledSet
    fingerprint: str  # sha256 over the folder's files


def prepare_domain(folder: Path, scoring: ScoringSettings) -> PreparedDomain:
    domain = read_domain(folder)
    documents = read_corpus(domain.corpus)
    heldout, training = heldout_split(documents, scoring.heldout_fraction, scoring.heldout_max_documents)
    if not training:
        raise EvalError(f"{folder}: the corpus has {len(documents)} document(s); holding out {len(heldout)} "
                        "leaves none to train on")
    train = _labeled(cap_balanced(domain.train, scoring.max_train, CAP_SEED, CAP_SALT))
    test = _labeled(cap_balanced(domain.test, scoring.max_test, CAP_SEED, CAP_SALT))
    missing = sorted(set(test.labels) - set(train.labels))
    if missing:
        raise EvalError(f"{folder}: after capping the train set to {scoring.max_train}, label(s) {missing} of "
                        "the test set have no train example; raise --max-train")
    return PreparedDomain(domain.name, domain, training, heldout, train, test, folder_fingerprint(folder))


def _labeled(examples: list[Example]) -> LabeledSet:
    return LabeledSet(tuple(e.text for e in examples), tuple(e.label for e in examples))


def heldout_split(documents: list[str], fraction: float, max_documents: int) -> tuple[list[str], list[str]]:
    """(held-out, training): the eval's held-out slice (das_formats.corpus.split_by_hash with the eval's salt)."""
    return split_by_hash(documents, HELDOUT_SALT, fraction, max_documents)


def folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in FILES:
        digest.update(name.encode() + b"\0" + hashlib.sha256((folder / name).read_bytes()).digest())
    return digest.hexdigest()


def score_model(folder: str | Path, domains: list[PreparedDomain], plan: EvalPlan,
                seed: int) -> tuple[dict[str, Any], LossKind]:
    """Every domain's end-task scores (probe; fine-tuning if asked) and held-out LM loss, for one model; and which
    loss that is (LOSS_KINDS: a masked LM's MLM loss, a causal LM's next-token loss), under the key `mlm_loss`."""
    from das_engine.loading import load_lm
    from das_engine.mlm_head import heldout_loss

    s = plan.scoring
    loss_length = plan.shared_config()["max_length"]  # every method's loss on the same blocks
    model, tokenizer, kind = load_lm(folder)
    model.to(plan.device)
    scores: dict[str, Any] = {}
    for d in domains:
        entry: dict[str, Any] = {"probe": probe_scores(model, tokenizer, d, s)}
        if s.finetune:
            entry["finetune"] = finetune_scores(Path(folder), d, s, seed, plan.device)
        entry["mlm_loss"] = heldout_loss(model, tokenizer, d.heldout_documents, max_length=loss_length,
                                         batch_size=s.heldout_batch_size, seed=0)
        scores[d.name] = entry
    return scores, LOSS_KINDS[kind]


def probe_scores(model: Any, tokenizer: Any, domain: PreparedDomain, s: ScoringSettings) -> dict[str, Any]:
    """Logistic regression on the frozen model's pooled features: fit on train, score on test."""
    from das_engine.endtask import ProbeConfig, pooled_features, probe_task

    train_x = pooled_features(model, tokenizer, domain.train.texts, max_length=s.max_length)
    test_x = pooled_features(model, tokenizer, domain.test.texts, max_length=s.max_length)
    fit = probe_task(train_x, domain.train, domain.domain.labels,
                     ProbeConfig(l2=s.probe_l2, max_iter=s.probe_max_iter), test_x, domain.test)
    return {"macro_f1": fit.scores.macro_f1, "accuracy": fit.scores.accuracy, "n": fit.scores.n,
            "correct": correct_string(fit.scores.predictions, domain)}


def correct_string(predictions: list[int], domain: PreparedDomain) -> str:
    """'1' where the test example was predicted right, '0' where wrong, in test order: per-example flips between
    stages are read from it (das_eval.metrics.flips)."""
    names = list(domain.domain.labels)
    return "".join("1" if names[p] == label else "0" for p, label in zip(predictions, domain.test.labels, strict=True))


def finetune_scores(folder: Path, domain: PreparedDomain, s: ScoringSettings, seed: int,
                    device: str) -> dict[str, Any]:
    """Fine-tune every parameter on the task's train set (seeded), score on its test set."""
    from das_engine.endtask import FinetuneConfig, finetune_task

    config = FinetuneConfig(lr=s.finetune_lr, epochs=s.finetune_epochs, batch_size=s.finetune_batch_size,
                            max_length=s.max_length, seed=seed)
    started = time.perf_counter()
    fit = finetune_task(folder, domain.train, config, domain.test, device=device)
    return {"macro_f1": fit.scores.macro_f1, "accuracy": fit.scores.accuracy, "n": fit.scores.n,
            "seconds": time.perf_counter() - started}
