"""Two engine options for the continual-learning evaluation: plain continual MLM (`softmask=False`,
the NCL baseline) and soft-masking of the word-embedding rows (`protect_embeddings`)."""

import pytest
import torch
from safetensors.torch import load_file

import das_engine.train_step as train_step
import das_engine.trainer as trainer
from das_engine.data import get_batch, mask_tokens, pack_corpus, step_seed
from das_engine.importance import BELOW_ONE, normalise_rows
from das_engine.loading import load_masked_lm
from das_engine.mlm import hidden_states, masked_lm_loss
from das_engine.softmask import SoftMask
from das_engine.train_step import get_lr
from das_engine.trainer import adapt
from das_engine.units import EMBEDDINGS, UnitTensors, resolve_units
from das_formats.config import DASConfig, setting_fields
from das_formats.corpus import read_corpus
from das_formats.layout import DOMAIN_IMPORTANCE, GROUPS, IMPORTANCE, IMPORTANCE_IN
from model_store.importance_history import version_importance
from model_store.store import ModelStore, PublishRequest

FILES = (IMPORTANCE_IN, DOMAIN_IMPORTANCE, IMPORTANCE)


def _config(**overrides) -> DASConfig:
    values = dict(steps=2, batch_size=4, max_length=48, importance_samples=8, importance_batch_size=4,
                  checkpoint_every=0, log_every=1, lr=1e-3)
    values.update(overrides)
    return DASConfig(**values)


def _word_embeddings(folder) -> torch.Tensor:
    model, _ = load_masked_lm(folder)
    return model.get_input_embeddings().weight.detach().clone()


def test_settings_defaults():
    config = DASConfig()
    assert config.softmask is True and config.protect_embeddings is True  # the default since docs/results.md
    fields = {f.name: f for f in setting_fields()}
    assert fields["softmask"].type is bool and "NCL" in fields["softmask"].help
    assert fields["protect_embeddings"].type is bool and fields["protect_embeddings"].help
    assert DASConfig(softmask=False).protect_embeddings is True  # plain MLM ignores it, as contrastive_weight


# --- NCL: plain continual MLM ---

def _plain_mlm_weights(base, corpus_file, config: DASConfig) -> dict[str, torch.Tensor]:
    """The trainer's data, seeds, optimizer, schedule and clipping, written out as a plain MLM loop."""
    torch.manual_seed(config.seed)
    model, tokenizer = load_masked_lm(base)
    units = resolve_units(model)
    packed = pack_corpus(read_corpus(corpus_file), tokenizer, config.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(config, step)
        ids, mask = get_batch(packed, config, step)
        masked, labels = mask_tokens(ids, mask, tokenizer, config.mlm_probability,
                                     torch.Generator().manual_seed(step_seed(config.seed, step, 3)))
        torch.manual_seed(step_seed(config.seed, step, 4))
        masked_lm_loss(units, hidden_states(model, masked, mask), labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_ncl_is_plain_mlm_without_any_importance_pass(tmp_path, roberta_dir, corpus_file, monkeypatch):
    calls = []

    def counted(module, name: str):
        real = getattr(module, name)
        return lambda *args, **kwargs: calls.append(name) or real(*args, **kwargs)

    for module, name in ((trainer, "general_importance_raw"), (trainer, "domain_importance_raw"),
                         (train_step, "contrastive_loss")):
        monkeypatch.setattr(module, name, counted(module, name))
    seen = []
    config = _config(softmask=False, weight_decay=0.01)  # contrastive_weight stays 1.0: ignored
    result = adapt(roberta_dir, corpus_file, tmp_path / "ncl", config, on_progress=seen.append)
    assert result.status == "completed" and calls == []
    assert {p.phase for p in seen} == {"train", "saving", "done"}
    assert set(result.metrics["timings"]) == {"load_s", "data_s"}  # no importance pass timed
    assert result.metrics["settings"]["softmask"] is False
    for entry in result.metrics["history"]:
        assert "contrastive" not in entry and entry["loss"] == entry["mlm"]
    assert not any((result.out_dir / name).exists() for name in FILES)  # no incoming importance: none
    # the weights are those of the plain MLM loop, bit for bit (no soft-mask, no contrastive term)
    model, _ = load_masked_lm(result.out_dir)
    got = model.state_dict()
    expected = _plain_mlm_weights(roberta_dir, corpus_file, config)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_ncl_versions_publish_and_the_chain_goes_on(tmp_path, roberta_dir, corpus_file, code_docs):
    store = ModelStore.open(tmp_path / "store")
    store.init_base(roberta_dir, "tiny-roberta")  # v0001, no importance

    def step(parent: str, docs, name: str, config: DASConfig) -> str:
        result = adapt(store.model_dir(parent), docs, tmp_path / name, config,
                       prev_importance=store.importance_file(parent))
        load_masked_lm(result.out_dir)
        return store.publish(PublishRequest(folder=result.out_dir, parent=parent, domain=name,
                                            base_model="tiny-roberta", settings=config.to_dict(),
                                            metrics={"timings": result.metrics["timings"]})).id

    ncl = _config(softmask=False, steps=1)
    v2 = step("v0001", corpus_file, "ncl-first", ncl)  # NCL first: nothing to hand on
    assert store.importance_file(v2) is None and version_importance(store, v2) is None
    v3 = step(v2, code_docs, "das", _config())  # a missing importance means a first domain: I(0) here
    assert "general_importance_s" in store.manifest(v3).metrics["timings"]
    for kind in ("importance_in", "domain_importance", "importance"):
        assert set(load_file(str(store.importance_file(v3, kind)))) == {*GROUPS, "embeddings"}  # on by default
    v4 = step(v3, corpus_file, "ncl-second", ncl)  # NCL hands v3's importance on unchanged
    handed_on = UnitTensors.load(store.importance_file(v3))
    assert store.importance_file(v4, "domain_importance") is None
    assert UnitTensors.load(store.importance_file(v4)).equals(handed_on)
    assert UnitTensors.load(store.importance_file(v4, "importance_in")).equals(handed_on)
    assert version_importance(store, v4).domain is None
    v5 = step(v4, code_docs, "das-again", _config())  # and the next DAS step trains against it
    assert UnitTensors.load(store.importance_file(v5, "importance_in")).equals(handed_on)
    assert "general_importance_s" not in store.manifest(v5).metrics["timings"]


# --- protect_embeddings ---

def test_row_normalising_keeps_unseen_rows_free():
    raw = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.0, 100.0]])
    for rule in ("clamp", "abs"):
        imp = normalise_rows(raw, rule)
        assert imp.shape == raw.shape and imp.dtype == torch.float32
        assert imp[0, 0] == 0 and imp[0, 4] == 0  # never seen
        assert (imp >= 0).all() and (imp < 1).all() and imp[0, 5] > 0.5
    assert normalise_rows(raw, "clamp")[0, 1] == 0 < normalise_rows(raw, "abs")[0, 1]  # below the seen mean


def _frequent_tokens(folder, corpus_file, count: int) -> torch.Tensor:
    _, tokenizer = load_masked_lm(folder)
    packed = pack_corpus(read_corpus(corpus_file), tokenizer, 48)
    ids = packed.input_ids[packed.attention_mask.bool()]
    specials = torch.tensor(tokenizer.all_special_ids)
    ids = ids[~torch.isin(ids, specials)]
    return torch.bincount(ids).argsort(descending=True)[:count]


def test_protected_embedding_rows_stay_put_in_update_mode(tmp_path, roberta_dir, corpus_file):
    model, _ = load_masked_lm(roberta_dir)
    units = resolve_units(model)
    tokens = _frequent_tokens(roberta_dir, corpus_file, 12)
    protected, free = tokens[0::2], tokens[1::2]
    rows = torch.zeros(units.embeddings_shape())
    rows[0, protected] = 1.0
    prev = tmp_path / "prev.safetensors"
    UnitTensors.full(units, 0.0).with_embeddings(rows).save(prev)
    before = model.get_input_embeddings().weight.detach().clone()
    config = _config(protect_embeddings=True, weight_decay=0.01)
    result = adapt(roberta_dir, corpus_file, tmp_path / "v", config, prev_importance=prev)
    after = _word_embeddings(result.out_dir)
    changed = (after != before).any(1)
    assert not changed[protected].any(), "a protected embedding row moved"
    assert changed[free].all(), "a free embedding row did not move"
    assert torch.equal(UnitTensors.load(result.out_dir / IMPORTANCE_IN).embeddings, rows)


def test_tied_embeddings_are_masked_once_in_both_modes(roberta_dir):
    model, _ = load_masked_lm(roberta_dir)
    units = resolve_units(model)
    weight = units.word_embeddings.weight
    assert model.get_output_embeddings().weight is weight  # the MLM decoder: the same parameter
    rows = torch.zeros(units.embeddings_shape())
    rows[0, [5, 7]] = torch.tensor([0.5, 0.75])
    softmask = SoftMask.build(units, UnitTensors.full(units, 0.0).with_embeddings(rows), embeddings=True)
    assert sum(p is weight for p, _ in softmask.entries) + sum(p is weight for p, _, _ in softmask.rows) == 1
    # grad mode: (1 - I) once, not (1 - I)^2
    weight.grad = torch.ones_like(weight)
    softmask.scale_gradients()
    assert torch.equal(weight.grad[:, 0], (1.0 - rows[0]))
    # update mode: p_old + (1 - I)(p_new - p_old); free rows untouched
    old = weight.detach().clone()
    before = softmask.snapshot()
    with torch.no_grad():
        weight.add_(1.0)
    softmask.scale_updates(before)
    assert torch.allclose((weight.detach() - old)[:, 0], 1.0 - rows[0])
    free = rows[0] == 0
    assert torch.equal(weight.detach()[free], (old + 1.0)[free])  # untouched: exactly the unmasked update
    with pytest.raises(ValueError, match="embeddings"):
        SoftMask.build(units, UnitTensors.full(units, 0.0), embeddings=True)


def test_embedding_importance_is_saved_bounded_and_emax_accumulated(tmp_path, roberta_dir, corpus_file, code_docs):
    config = _config(protect_embeddings=True)
    first = adapt(roberta_dir, corpus_file, tmp_path / "v1", config)
    second = adapt(first.out_dir, code_docs, tmp_path / "v2", config,
                   prev_importance=first.out_dir / IMPORTANCE)
    _, tokenizer = load_masked_lm(roberta_dir)
    vocab = len(tokenizer)
    present = torch.zeros(vocab, dtype=torch.bool)
    present[pack_corpus(read_corpus(corpus_file), tokenizer, 48).input_ids.flatten()] = True
    for result in (first, second):
        loaded = {name: UnitTensors.load(result.out_dir / name) for name in FILES}
        for name in FILES:
            rows = load_file(str(result.out_dir / name))[EMBEDDINGS]
            assert rows.shape == (1, vocab) and rows.dtype == torch.float32, name
            assert (rows >= 0).all() and (rows <= BELOW_ONE).all(), name
        imp_in, dom, cum = (loaded[name].embeddings for name in FILES)
        assert dom.max() > 0 and imp_in.max() > 0  # both passes produce it (I(0) from the KL proxy)
        assert torch.equal(cum, torch.maximum(imp_in, dom))  # EMax
    first_in = UnitTensors.load(first.out_dir / IMPORTANCE_IN).embeddings
    first_dom = UnitTensors.load(first.out_dir / DOMAIN_IMPORTANCE).embeddings
    assert (first_in[0, ~present] == 0).all() and (first_dom[0, ~present] == 0).all()  # never seen: free
    handed_on = UnitTensors.load(first.out_dir / IMPORTANCE)
    assert UnitTensors.load(second.out_dir / IMPORTANCE_IN).equals(handed_on)


def test_a_chain_without_embedding_rows_starts_them_at_zero(tmp_path, roberta_dir):
    model, _ = load_masked_lm(roberta_dir)
    units = resolve_units(model)
    path = tmp_path / "old.safetensors"
    UnitTensors.full(units, 0.25).save(path)
    incoming = trainer._incoming(path, units, _config(protect_embeddings=True))
    assert incoming.embeddings.shape == units.embeddings_shape() and not incoming.embeddings.any()
    assert trainer._incoming(path, units, _config(protect_embeddings=False)).embeddings is None
    # EMax with rows on one side only keeps them; off, a handed-on key is kept
    rows = torch.rand(units.embeddings_shape())
    with_rows = UnitTensors.full(units, 0.5).with_embeddings(rows)
    assert torch.equal(UnitTensors.full(units, 0.0).maximum(with_rows).embeddings, rows)
    assert torch.equal(with_rows.maximum(UnitTensors.full(units, 0.0)).embeddings, rows)
