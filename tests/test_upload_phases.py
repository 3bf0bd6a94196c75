"""An upload records what it spends besides training (issue #32): the new version's `metrics.phases_s` holds the
seconds of preparing (corpus, parent, lineage), training and the gate; the log line `upload_phases` adds the
publication."""

import logging

from das_formats.config import DASConfig
from model_store.store import ModelStore
from pipeline.adaptation import adapt_active


def test_an_upload_records_the_seconds_of_each_phase(tmp_path, bert_dir, corpus_file, caplog):
    store = ModelStore.open(tmp_path / "store")
    store.init_base(bert_dir, "embedded")
    config = DASConfig(steps=2, batch_size=4, max_length=32, importance_samples=4, importance_batch_size=4,
                       checkpoint_every=0)
    with caplog.at_level(logging.INFO, logger="pipeline.adaptation"):
        manifest = adapt_active(store, corpus_file, "legal", config, work_dir=tmp_path / "work")
    phases = store.manifest(manifest.id).metrics["phases_s"]
    assert set(phases) == {"prepare", "train", "gate"} and all(v >= 0 for v in phases.values())
    assert phases["train"] > 0
    logged = [r for r in caplog.records if getattr(r, "event", None) == "upload_phases"]
    assert len(logged) == 1 and list(logged[0].phases_s) == ["prepare", "train", "gate", "publish"]
