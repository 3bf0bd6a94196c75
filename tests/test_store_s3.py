"""The store on S3-compatible object storage: a local moto server on loopback, a real Redis lock."""

import uuid

import boto3
import pytest
from moto.server import ThreadedMotoServer
from transformers import AutoModelForMaskedLM

from model_store.store import CorruptVersion, LineageError, ModelStore, PublishRequest

BUCKET = "das-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _open(endpoint, prefix, redis_url, cache):
    options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    return ModelStore.open(f"s3://{BUCKET}/{prefix}", redis_url=redis_url, storage_options=options, cache_dir=cache)


def test_s3_store_publish_activate_rollback_and_integrity(s3_endpoint, redis_url, tmp_path, roberta_dir):
    prefix = f"store-{uuid.uuid4().hex[:8]}"
    store = _open(s3_endpoint, prefix, redis_url, tmp_path / "cache-a")
    assert store.ids() == [] and store.active_id() is None
    store.init_base(roberta_dir, "tiny-roberta")
    v2 = store.publish(PublishRequest(folder=roberta_dir, parent="v0001", domain="legal", base_model="tiny-roberta"))
    assert (v2.id, v2.status) == ("v0002", "active")
    # a second process (other cache) sees the same store and loads the version from object storage
    other = _open(s3_endpoint, prefix, redis_url, tmp_path / "cache-b")
    assert other.active_id() == "v0002" and [m.id for m in other.versions()] == ["v0001", "v0002"]
    AutoModelForMaskedLM.from_pretrained(other.model_dir("v0002"))
    other.verify("v0002")
    # lineage and rollback
    with pytest.raises(LineageError):
        other.publish(PublishRequest(folder=roberta_dir, parent="v0001", domain="late", base_model="tiny-roberta"))
    other.activate("v0001")
    assert store.active_id() == "v0001" and store.manifest("v0002").status == "retired"
    # a writer that died mid-upload left objects without a manifest: invisible, then cleaned up
    store.backend.write_atomic("versions/v0003/model.safetensors", b"partial")
    assert store.ids() == ["v0001", "v0002"]
    v3 = store.publish(PublishRequest(folder=roberta_dir, parent="v0001", domain="code", base_model="tiny-roberta"))
    assert v3.id == "v0003" and store.verify("v0003") is None
    # a corrupted object is caught by its digest
    store.backend.write_atomic("versions/v0002/model.safetensors", b"corrupted bytes")
    with pytest.raises(CorruptVersion):
        store.verify("v0002")
    with pytest.raises(CorruptVersion):
        _open(s3_endpoint, prefix, redis_url, tmp_path / "cache-c").model_dir("v0002")


def test_object_store_without_redis_is_refused(s3_endpoint):
    with pytest.raises(Exception, match="Redis"):
        ModelStore.open(f"s3://{BUCKET}/x", storage_options={"key": "k", "secret": "s"})
