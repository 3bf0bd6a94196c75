"""End tasks: labeled data, pooled features, the probe, fine-tuning, scores and the forgetting gate.

The task is real text: licence paragraphs against Python standard-library docstrings (the
conftest's `legal_docs` and `code_docs`), on the real embedded BERT and a tiny random RoBERTa.
"""

from __future__ import annotations

import json
import random
import struct

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from das_engine.endtask import (
    FinetuneConfig,
    ProbeConfig,
    ProbeHead,
    classify_logits,
    finetune,
    fit_probe,
    pooled_features,
)
from das_engine.loading import load_masked_lm
from das_engine.task_scores import accuracy, gate, macro_f1, paired_bootstrap_drop, score
from das_formats.task_data import LabeledSet, TaskDataError, check_task_sets, label_ids, read_labeled_jsonl

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def task(legal_docs, code_docs) -> tuple[LabeledSet, LabeledSet]:
    """(train, test): 160 and 80 examples of licence paragraphs against docstrings, shuffled with a fixed seed."""
    pairs = [(text, "licence") for text in legal_docs] + [(text, "docstring") for text in code_docs]
    random.Random(0).shuffle(pairs)

    def labeled(part):
        return LabeledSet(tuple(t for t, _ in part), tuple(label for _, label in part))

    return labeled(pairs[:160]), labeled(pairs[160:])


@pytest.fixture(scope="module")
def bert(bert_dir):
    model, tokenizer = load_masked_lm(bert_dir)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def features(bert, task) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled BERT features of (train, test), (160, D) and (80, D)."""
    model, tokenizer = bert
    train, test = task
    return (pooled_features(model, tokenizer, train.texts, max_length=MAX_LENGTH),
            pooled_features(model, tokenizer, test.texts, max_length=MAX_LENGTH))


# --- reading and checking labeled data ------------------------------------------------------------


def read(raw: bytes, max_examples: int = 100, max_chars: int = 1000) -> LabeledSet:
    return read_labeled_jsonl(raw, name="train.jsonl", max_examples=max_examples, max_chars=max_chars)


def test_read_labeled_jsonl_reads_texts_and_labels():
    raw = ('\ufeff{"text": "  the first text ", "label": "b"}\r\n\n   \n'
           '{"label": 3, "text": "the second, with a line separator \u2028 inside"}\n'
           '{"text": "the third", "label": "a"}').encode()
    examples = read(raw)
    assert examples.texts == ("the first text", "the second, with a line separator \u2028 inside", "the third")
    assert examples.labels == ("b", "3", "a")
    assert examples.label_names == ("3", "a", "b")
    assert examples.label_ids(examples.label_names) == [2, 0, 1]


GOOD = b'{"text": "fine", "label": "x"}\n'


@pytest.mark.parametrize(("raw", "limits", "expected"), [
    (GOOD + b'{"text": "b", "label": "y", "id": 3, "source": "s"}\n', {}, ["line 2", "unknown key(s) 'id', 'source'"]),
    (GOOD + b'{"text": "no label"}\n', {}, ["line 2", "lacks 'label'"]),
    (b'{"text": "   ", "label": "x"}\n', {}, ["line 1", '"text" is empty']),
    (GOOD + b'{"text": "eleven char", "label": "x"}\n', {"max_chars": 10}, ["line 2", "11 characters", "10 allowed"]),
    (GOOD + b"\n" + GOOD + GOOD, {"max_examples": 2}, ["more than 2 examples", "line 4"]),
    (GOOD + b'{"text": "caf\xe9", "label": "x"}\n', {}, ["not UTF-8", "offset 44", "line 2"]),
    (GOOD + b'{"text": "a\x00b", "label": "x"}\n', {}, ["NUL byte", "line 2"]),
    (GOOD + b'{"text": "broken", "label": }\n', {}, ["line 2", "not valid JSON"]),
    (b'["fine", "x"]\n', {}, ["line 1", "not a JSON object"]),
    (b'{"text": 5, "label": "x"}\n', {}, ["line 1", '"text" must be a string']),
    (b'{"text": "t", "label": 1.5}\n', {}, ["line 1", '"label" must be a string or an integer, got float']),
    (b'{"text": "t", "label": true}\n', {}, ["line 1", "got bool"]),
    (b'{"text": "t", "label": " "}\n', {}, ["line 1", '"label" is empty']),
    (b'{"text": "t", "label": "x", "label": "y"}\n', {}, ["line 1", "repeats key(s) 'label'"]),
    (b"\n  \n", {}, ["holds no examples"]),
])
def test_read_labeled_jsonl_errors_say_what_and_where(raw, limits, expected):
    with pytest.raises(TaskDataError) as err:
        read(raw, **limits)
    message = str(err.value)
    assert message.startswith("train.jsonl: ")
    for part in expected:
        assert part in message


def labeled(*labels: str) -> LabeledSet:
    return LabeledSet(tuple(f"text {i}" for i in range(len(labels))), labels)


@pytest.mark.parametrize(("train", "eval_set", "expected"), [
    (labeled("a", "a", "a"), None, ["1 label(s) 'a'", "at least 2 labels"]),
    (labeled("a", "a", "b", "rare", "b"), None, ["fewer than 2 examples of label(s) 'rare'"]),
    (labeled("a", "a", "b", "b"), labeled("a", "ghost", "b", "phantom"), ["'ghost', 'phantom'", "train lacks"]),
    (labeled("a", "a", "b", "b"), labeled(), ["eval holds no examples"]),
])
def test_check_task_sets_names_what_is_wrong(train, eval_set, expected):
    with pytest.raises(TaskDataError) as err:
        check_task_sets(train, eval_set)
    for part in expected:
        assert part in str(err.value)


def test_check_task_sets_accepts_a_usable_pair(task):
    train, test = task
    check_task_sets(train, test)
    check_task_sets(train, None)
    check_task_sets(labeled("a", "a", "b", "b"), labeled("b"))  # eval may hold a subset of the labels


def test_labels_outside_the_task_are_refused():
    with pytest.raises(TaskDataError, match="'z'"):
        label_ids(["a", "z"], ["a", "b"])
    with pytest.raises(TaskDataError, match="'z'"):
        fit_probe(torch.zeros(2, 3), ["a", "z"], ["a", "b"], ProbeConfig())


# --- features -------------------------------------------------------------------------------------


def test_pooled_features_are_the_normalised_mean_of_each_text_alone(bert, task):
    """Length-sorted, padded batches give each text the features it gets on its own, in the callers' order."""
    model, tokenizer = bert
    texts = [task[0].texts[i] for i in (0, 1, 2, 3, 4)] + ["short", "a bit longer than short"]
    model.train()  # the features must not depend on the caller's mode, and must leave it as it was
    got = pooled_features(model, tokenizer, texts, max_length=MAX_LENGTH, batch_size=3)
    assert model.training
    model.eval()
    with torch.inference_mode():
        expected = []
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")["input_ids"]
            hidden = model.base_model(input_ids=ids).last_hidden_state[0]  # (T, D), no padding at all
            expected.append(F.normalize(hidden.mean(0), dim=-1))
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert got.shape == (len(texts), model.config.hidden_size)
    torch.testing.assert_close(got, torch.stack(expected), atol=2e-5, rtol=1e-4)
    assert pooled_features(model, tokenizer, [], max_length=MAX_LENGTH).shape == (0, model.config.hidden_size)


# --- the probe ------------------------------------------------------------------------------------


def test_probe_separates_licences_from_docstrings_on_held_out_text(task, features):
    train, test = task
    train_x, test_x = features
    head = fit_probe(train_x, train.labels, train.label_names, ProbeConfig())
    predicted = head(test_x).argmax(1).tolist()
    scores = score(test.label_ids(train.label_names), predicted, len(train.label_names))
    assert scores.macro_f1 > 80 and scores.accuracy > 80, scores
    assert scores.n == len(test) and scores.predictions == predicted


def test_probe_standardises_features_so_their_scale_does_not_matter(task, features):
    """Standardising with the train mean/std makes the L2-penalised fit blind to each feature's unit."""
    train, test = task
    train_x, test_x = features
    generator = torch.Generator().manual_seed(1)
    scale = 10 ** (torch.rand(train_x.shape[1], generator=generator) * 4 - 2)  # (D,) from 0.01 to 100
    shift = torch.randn(train_x.shape[1], generator=generator)
    plain = fit_probe(train_x, train.labels, train.label_names, ProbeConfig())
    rescaled = fit_probe(train_x * scale + shift, train.labels, train.label_names, ProbeConfig())
    torch.testing.assert_close(rescaled(test_x * scale + shift), plain(test_x), atol=1e-3, rtol=1e-3)


def test_probe_fit_is_deterministic(task, features):
    train, _ = task
    train_x, _ = features
    before = train_x.clone()
    first = fit_probe(train_x, train.labels, train.label_names, ProbeConfig(seed=0))
    second = fit_probe(train_x, train.labels, train.label_names, ProbeConfig(seed=0))
    other_seed = fit_probe(train_x, train.labels, train.label_names, ProbeConfig(seed=7))
    with torch.inference_mode():  # a caller's inference mode does not stop the fit
        inside = fit_probe(train_x, train.labels, train.label_names, ProbeConfig(seed=0))
    for head in (second, other_seed, inside):  # nothing random in the fit: convex loss, zero start, full batch
        assert torch.equal(head.linear.weight, first.linear.weight)
        assert torch.equal(head.linear.bias, first.linear.bias)
    assert torch.equal(train_x, before)


def test_probe_save_load_round_trip_is_exact_and_pickle_free(tmp_path, task, features):
    train, test = task
    train_x, test_x = features
    head = fit_probe(train_x, train.labels, train.label_names, ProbeConfig(l2=0.01, max_iter=50, seed=3))
    head.save(tmp_path / "probe")
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == ["probe.json", "probe.safetensors"]
    meta = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert meta["label_names"] == ["docstring", "licence"]
    assert (meta["feature_dim"], meta["n_labels"]) == (train_x.shape[1], 2)
    assert meta["config"] == {"l2": 0.01, "max_iter": 50, "seed": 3}
    raw = (tmp_path / "probe" / "probe.safetensors").read_bytes()  # safetensors: u64 header length, JSON header
    header = json.loads(raw[8: 8 + struct.unpack("<Q", raw[:8])[0]])
    assert set(header) - {"__metadata__"} == {"mean", "std", "weight", "bias"}

    loaded = ProbeHead.load(tmp_path / "probe")
    assert loaded.label_names == head.label_names and loaded.config == head.config
    with torch.inference_mode():
        assert torch.equal(loaded(test_x), head(test_x))


# --- fine-tuning --------------------------------------------------------------------------------


def test_finetune_bert_learns_the_task_and_saves_as_a_classifier(tmp_path, bert_dir, task):
    train, test = task
    small = LabeledSet(train.texts[:96], train.labels[:96])
    steps: list[tuple[int, int, float]] = []
    config = FinetuneConfig(lr=5e-4, epochs=2, batch_size=16, max_length=MAX_LENGTH)
    model, tokenizer = finetune(bert_dir, small, config, on_step=lambda *args: steps.append(args))
    assert [(s, total) for s, total, _ in steps] == [(s, 12) for s in range(1, 13)]
    losses = [loss for _, _, loss in steps]
    assert sum(losses[-3:]) < sum(losses[:3]) - 0.15, losses
    assert not model.training
    assert model.config.id2label == {0: "docstring", 1: "licence"}

    logits = classify_logits(model, tokenizer, test.texts, max_length=MAX_LENGTH, batch_size=7)
    assert logits.shape == (len(test), 2) and logits.dtype == torch.float32
    scores = score(test.label_ids(small.label_names), logits.argmax(1).tolist(), 2)
    assert scores.accuracy > 75, scores  # chance is about 50

    model.save_pretrained(tmp_path / "task")
    tokenizer.save_pretrained(tmp_path / "task")
    assert (tmp_path / "task" / "model.safetensors").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "task")
    assert reloaded.config.id2label == {0: "docstring", 1: "licence"}
    torch.testing.assert_close(classify_logits(reloaded, tokenizer, test.texts, max_length=MAX_LENGTH), logits)


def test_finetune_is_deterministic_given_the_seed_and_keeps_the_callers_random_state(bert_dir, task):
    train, _ = task
    small = LabeledSet(train.texts[:32], train.labels[:32])
    config = FinetuneConfig(lr=5e-4, epochs=1, batch_size=16, max_length=32)
    rng_before = torch.get_rng_state()
    first, _ = finetune(bert_dir, small, config)
    assert torch.equal(torch.get_rng_state(), rng_before)
    torch.manual_seed(1234)  # the caller's random state must not matter, only the config's seed
    second, _ = finetune(bert_dir, small, config)
    torch.set_rng_state(rng_before)
    other, _ = finetune(bert_dir, small, FinetuneConfig(lr=5e-4, epochs=1, batch_size=16, max_length=32, seed=1))
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


def test_finetune_runs_on_roberta(roberta_dir, task):
    train, test = task
    small = LabeledSet(train.texts[:32], train.labels[:32])
    steps: list[tuple[int, int, float]] = []
    model, tokenizer = finetune(roberta_dir, small, FinetuneConfig(lr=1e-3, epochs=1, max_length=MAX_LENGTH),
                                on_step=lambda *args: steps.append(args))
    assert [s for s, _, _ in steps] == [1, 2]
    logits = classify_logits(model, tokenizer, test.texts[:10], max_length=MAX_LENGTH)
    assert logits.shape == (10, 2) and torch.isfinite(logits).all()
    assert model.config.label2id == {"docstring": 0, "licence": 1}


def test_configs_refuse_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="FinetuneConfig.epochs"):
        FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match="FinetuneConfig.warmup_ratio"):
        FinetuneConfig(warmup_ratio=1.0)
    with pytest.raises(ValueError, match="ProbeConfig.l2"):
        ProbeConfig(l2=-1.0)


# --- scores -------------------------------------------------------------------------------------


def test_macro_f1_and_accuracy_match_hand_computed_values():
    # label 0: TP 1, 2 true, 2 predicted -> F1 2/4; label 1: TP 2, 2 true, 3 predicted -> 4/5; label 2: 0
    assert macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], n_labels=3) == pytest.approx((0.5 + 0.8 + 0) / 3 * 100)
    assert accuracy([0, 0, 1, 1, 2], [0, 1, 1, 1, 0]) == pytest.approx(60.0)
    # a label absent from both is not averaged over; one only predicted counts as 0 (sklearn's macro average)
    assert macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], n_labels=5) == pytest.approx((0.5 + 0.8 + 0) / 3 * 100)
    assert macro_f1([0, 0, 1, 1], [0, 0, 1, 2], n_labels=3) == pytest.approx((1 + 2 / 3 + 0) / 3 * 100)
    assert macro_f1([1, 0, 1], [1, 0, 1], n_labels=2) == 100.0
    assert accuracy([1, 0, 1], [0, 1, 0]) == 0.0
    scores = score([0, 1], [1, 1], 2)
    assert (scores.macro_f1, scores.accuracy) == pytest.approx(((0 + 2 / 3) / 2 * 100, 50.0))
    assert (scores.n, scores.predictions) == (2, [1, 1])


def test_scores_refuse_mismatched_or_out_of_range_ids():
    with pytest.raises(ValueError, match="equally long"):
        macro_f1([0, 1], [0], 2)
    with pytest.raises(ValueError, match="non-empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="y_pred holds label ids outside 0..1"):
        macro_f1([0, 1], [0, 2], 2)


# --- the forgetting gate --------------------------------------------------------------------------


def test_identical_predictions_drop_nothing_and_pass():
    y_true = [i % 3 for i in range(30)]
    predicted = [(i % 3) if i % 4 else 0 for i in range(30)]
    boot = paired_bootstrap_drop(y_true, predicted, predicted, 3, samples=500)
    assert (boot.drop, boot.low, boot.high, boot.samples) == (0.0, 0.0, 0.0, 500)  # paired: every resample agrees
    decision = gate("topics", y_true, predicted, predicted, 3, max_drop=0.0)
    assert not decision.rejected and decision.drop == 0.0 and decision.noise == 0.0
    assert decision.reference_f1 == decision.candidate_f1 == macro_f1(y_true, predicted, 3)


def test_a_candidate_that_flips_most_correct_predictions_is_rejected():
    y_true = [i % 2 for i in range(100)]
    candidate = [1 - y if i % 5 else y for i, y in enumerate(y_true)]  # 80 of 100 now wrong
    decision = gate("licences", y_true, y_true, candidate, 2, max_drop=1.0)
    assert decision.rejected
    assert decision.reference_f1 == 100.0 and decision.drop == pytest.approx(100.0 - macro_f1(y_true, candidate, 2))
    assert decision.low > 0 and decision.noise < decision.drop
    assert "task 'licences'" in decision.reason and f"{decision.drop:.2f}" in decision.reason
    assert "rejected" in decision.reason


def test_one_example_worse_on_a_small_set_is_within_noise():
    y_true = [i % 2 for i in range(20)]
    active = list(y_true)
    active[0] = 1 - active[0]
    candidate = list(active)
    candidate[1] = 1 - candidate[1]  # one more mistake
    decision = gate("tiny", y_true, active, candidate, 2, max_drop=0.0)
    assert decision.drop > 0 and decision.low <= 0 < decision.high
    assert decision.noise >= decision.drop
    assert not decision.rejected
    assert "task 'tiny'" in decision.reason and "within sampling noise" in decision.reason


def test_a_small_but_consistent_drop_on_a_large_set_is_rejected():
    """The gate is not blind to small drops: 5% more mistakes over 2,000 examples is beyond noise."""
    y_true = [i % 4 for i in range(2000)]
    candidate = [(y + 1) % 4 if i % 20 == 0 else y for i, y in enumerate(y_true)]
    decision = gate("large", y_true, y_true, candidate, 4, max_drop=2.0)
    assert decision.drop == pytest.approx(100 - macro_f1(y_true, candidate, 4)) and decision.drop > 2.0
    assert decision.rejected and decision.low > 0
    within_limit = gate("large", y_true, y_true, candidate, 4, max_drop=10.0)
    assert not within_limit.rejected and "within the limit" in within_limit.reason


def test_bootstrap_is_deterministic_given_the_seed():
    y_true = [i % 3 for i in range(60)]
    old = [y if i % 6 else (y + 1) % 3 for i, y in enumerate(y_true)]
    new = [y if i % 4 else (y + 2) % 3 for i, y in enumerate(y_true)]
    first = paired_bootstrap_drop(y_true, old, new, 3, samples=300, seed=5)
    assert paired_bootstrap_drop(y_true, old, new, 3, samples=300, seed=5) == first
    assert paired_bootstrap_drop(y_true, old, new, 3, samples=300, seed=6) != first
    assert first.low <= first.drop <= first.high


def test_a_served_model_reads_what_its_position_embeddings_hold(bert_dir, roberta_dir):
    """One definition of the tokens a model holds (das_formats.config.model_max_length) serves the API, the probes
    and the job limits: BERT uses every position, the RoBERTa family reserves padding_idx + 1 of them."""
    from transformers import AutoConfig

    from das_engine.endtask import served_max_tokens
    from das_formats.config import model_max_length

    for folder in (bert_dir, roberta_dir):
        config = AutoConfig.from_pretrained(folder)
        assert served_max_tokens(config) == min(model_max_length(config.to_dict()), 512)
    bert, roberta = AutoConfig.from_pretrained(bert_dir), AutoConfig.from_pretrained(roberta_dir)
    assert served_max_tokens(bert) == min(bert.max_position_embeddings, 512)
    assert served_max_tokens(roberta) == roberta.max_position_embeddings - roberta.pad_token_id - 1
