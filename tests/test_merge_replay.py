"""What a version keeps: interpolation toward the parent (merge, fixed, importance-weighted and chosen) and
replay of the lineage's earlier corpora."""

import json

import pytest
import torch
from safetensors.torch import load_file

from das_engine.data import get_batch, pack_corpus
from das_engine.loading import load_masked_lm
from das_engine.merge import MERGE_GRID, MergeScores, choose_alpha, interpolate, parent_state
from das_engine.trainer import adapt
from das_engine.training_data import TrainingData, replay_rows
from das_engine.units import UnitTensors, resolve_units
from das_formats.config import DASConfig
from das_formats.layout import IMPORTANCE_IN, METRICS


def _config(**overrides) -> DASConfig:
    values = dict(steps=3, batch_size=4, max_length=48, importance_samples=8, importance_batch_size=4,
                  checkpoint_every=0, log_every=1, lr=5e-3, softmask=False)
    values.update(overrides)
    return DASConfig(**values)


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


# --- merge ---

def test_merge_zero_is_the_parent_and_one_the_trained_model_bit_for_bit(tmp_path, bert_dir, legal_docs):
    trained = adapt(bert_dir, legal_docs[:40], tmp_path / "trained", _config()).out_dir
    at_one = adapt(bert_dir, legal_docs[:40], tmp_path / "one", _config(merge_alpha=1.0)).out_dir
    at_zero = adapt(bert_dir, legal_docs[:40], tmp_path / "zero", _config(merge_alpha=0.0)).out_dir
    parent = adapt(bert_dir, legal_docs[:40], tmp_path / "p", _config(steps=1, lr=1e-12, merge_alpha=0.0)).out_dir
    assert _differs(_weights(trained), _weights(parent))  # training moved the weights
    assert not _differs(_weights(at_one), _weights(trained))
    assert not _differs(_weights(at_zero), _weights(parent))
    metrics = json.loads((at_zero / METRICS).read_text())
    assert metrics["merge"] == {"alpha": 0.0, "weighting": "uniform", "auto": None}


def test_interpolation_keeps_the_share_of_the_change(model_and_tokenizer):
    model, _ = model_and_tokenizer
    parent = parent_state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    interpolate(model, parent, 0.25)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, parent[name] + 0.25)


def test_importance_weighting_keeps_important_units_at_the_parent(model_and_tokenizer):
    model, _ = model_and_tokenizer
    units = resolve_units(model)
    parent = parent_state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    importance = UnitTensors.full(units, 0.0)
    importance.intermediate[0, 0] = 1.0  # layer 0's first FFN neuron: all the earlier domains need it
    importance.intermediate[0, 1] = 0.5
    interpolate(model, parent, 0.5, units=units, importance=importance)
    weight = units.layers[0].intermediate.weight
    name = next(n for n, p in model.named_parameters() if p is weight)
    delta = weight - parent[name]
    torch.testing.assert_close(delta[0], torch.zeros_like(delta[0]))  # share 0.5 * (1 - 1)
    torch.testing.assert_close(delta[1], torch.full_like(delta[1], 0.25))  # 0.5 * (1 - 0.5)
    torch.testing.assert_close(delta[2:], torch.full_like(delta[2:], 0.5))  # unimportant: the plain share
    query = units.layers[0].query.weight  # a head with importance 0 takes the plain share too
    qname = next(n for n, p in model.named_parameters() if p is query)
    torch.testing.assert_close(query - parent[qname], torch.full_like(query, 0.5))


def test_importance_weighting_needs_an_importance():
    with pytest.raises(ValueError, match="merge_weighting='importance' needs an importance"):
        DASConfig(softmask=False, merge_weighting="importance")
    assert DASConfig(softmask=False, track_importance=True, merge_weighting="importance").uses_importance
    for bad in ({"merge_alpha": 1.5}, {"merge_alpha": -0.1}, {"replay_fraction": 0.95}, {"merge_max_rise": -1},
                {"merge_alpha": float("nan")}, {"replay_fraction": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DASConfig(**bad)


def test_choose_alpha_takes_the_largest_share_within_the_bounds():
    rise = {1.0: 0.20, 0.75: 0.08, 0.5: 0.03, 0.25: 0.01}
    tried = []

    def score(alpha):
        tried.append(alpha)
        return MergeScores(new_gain=alpha, old_rise=rise[alpha], task_drops={"sentiment": alpha > 0.9})

    choice = choose_alpha(score, max_rise=0.05)
    assert choice.alpha == 0.5 and tried == [1.0, 0.75, 0.5]  # from the top, stopping at the first that qualifies
    assert [g["accepted"] for g in choice.grid] == [False, False, True]
    assert choice.grid[0]["task_drops"] == {"sentiment": True}
    none = choose_alpha(lambda a: MergeScores(a, 1.0), max_rise=0.05)
    assert none.alpha == min(MERGE_GRID) and "no share" in none.reason and len(none.grid) == len(MERGE_GRID)
    first = choose_alpha(lambda a: MergeScores(a, None), max_rise=0.05)  # nothing learned before: the trained model
    assert first.alpha == 1.0


def test_merge_auto_records_the_grid_and_keeps_validation_out_of_training(tmp_path, bert_dir, legal_docs, code_docs):
    config = _config(merge_auto=True, replay_fraction=0.25, merge_max_rise=0.0, steps=4)
    judged = []

    def judge(model, tokenizer):
        judged.append(model.training)
        return {"task-a": False}, {"task-a": {"macro_f1": 50.0}}

    result = adapt(bert_dir, code_docs[:60], tmp_path / "auto", config, replay={"legal": legal_docs[:60]},
                   judge_tasks=judge)
    merge = result.metrics["merge"]
    assert merge["auto"]["max_rise"] == 0.0
    grid = merge["auto"]["grid"]
    assert [g["alpha"] for g in grid] == sorted(MERGE_GRID, reverse=True)[:len(grid)]
    assert merge["alpha"] == grid[-1]["alpha"]
    assert set(grid[0]["details"]["losses"]["old"]) == {"legal"} and grid[0]["details"]["task-a"]["macro_f1"] == 50
    assert len(judged) == len(grid)
    # a zero rise bound: a share is accepted only if the legal loss did not rise at all
    for g in grid:
        assert g["accepted"] == (g["old_rise"] <= 0.0)
    assert result.metrics["replay"] == {"rows_per_batch": 1, "corpora": {"legal": 57}}  # 3 of 60 kept out
    data = TrainingData.prepare(code_docs[:60], {"legal": legal_docs[:60]}, load_masked_lm(bert_dir)[1], config)
    assert len(data.validation_new) == 3 and len(data.validation_old["legal"]) == 3
    assert data.packed.num_documents == 57 and data.replay_documents == {"legal": 57}


# --- replay ---

def test_replay_rows_come_from_the_replay_corpus_only_and_repeat_with_the_seed(bert_dir, legal_docs, code_docs):
    _, tokenizer = load_masked_lm(bert_dir)
    config = _config(batch_size=8, replay_fraction=0.25)
    domain = pack_corpus(code_docs[:40], tokenizer, 48)
    replay = pack_corpus(legal_docs[:40], tokenizer, 48)
    rows = replay_rows(config, True)
    assert rows == 2 and replay_rows(config, False) == 0
    domain_blocks = {tuple(b.tolist()) for b in domain.input_ids}
    replay_blocks = {tuple(b.tolist()) for b in replay.input_ids}
    for step in range(6):
        ids, mask = get_batch(domain, config, step, replay, rows)
        assert ids.shape == (8, 48) and mask.shape == (8, 48)
        assert all(tuple(r.tolist()) in domain_blocks for r in ids[:6])
        assert all(tuple(r.tolist()) in replay_blocks for r in ids[6:])
        again, _ = get_batch(domain, config, step, replay, rows)
        assert torch.equal(ids, again)
    other, _ = get_batch(domain, _config(batch_size=8, replay_fraction=0.25, seed=1), 0, replay, rows)
    assert not torch.equal(other, get_batch(domain, config, 0, replay, rows)[0])
    # without replay the batches are the domain's stream alone, as before replay existed
    plain, _ = get_batch(domain, _config(batch_size=8), 0)
    assert all(tuple(r.tolist()) in domain_blocks for r in plain)


def test_replay_changes_training_and_is_part_of_what_a_run_was_made_from(tmp_path, bert_dir, legal_docs, code_docs):
    config = _config(replay_fraction=0.5)
    with_replay = adapt(bert_dir, code_docs[:40], tmp_path / "r", config, replay={"legal": legal_docs[:40]})
    without = adapt(bert_dir, code_docs[:40], tmp_path / "n", config)  # nothing to draw from: 0 rows
    assert with_replay.metrics["replay"] == {"rows_per_batch": 2, "corpora": {"legal": 40}}
    assert without.metrics["replay"] == {"rows_per_batch": 0, "corpora": {}}
    assert _differs(_weights(with_replay.out_dir), _weights(without.out_dir))
    with pytest.raises(ValueError, match="other replay corpora"):
        adapt(bert_dir, code_docs[:40], tmp_path / "r", config, replay={"legal": legal_docs[:20]})


def test_track_importance_keeps_the_history_without_masking(tmp_path, bert_dir, legal_docs):
    plain = adapt(bert_dir, legal_docs[:40], tmp_path / "plain", _config())
    tracked = adapt(bert_dir, legal_docs[:40], tmp_path / "tracked", _config(track_importance=True))
    assert not (plain.out_dir / IMPORTANCE_IN).exists()
    assert (tracked.out_dir / IMPORTANCE_IN).is_file() and (tracked.out_dir / "importance.safetensors").is_file()
    assert not _differs(_weights(plain.out_dir), _weights(tracked.out_dir))  # the importance masks nothing
