"""A worker that runs another model than the collection's cannot add to it: the add is refused as
`model_mismatch` and the renditions it wrote first are deleted (a real Redis, the worker's store).

Found while moving collection storage to shared/collections: the old store parsed the script's
{-2, model} answer as flags before checking it, so every item failed with a ValueError and the
renditions stayed in the blob store with no record naming them."""

from __future__ import annotations

import tempfile
import uuid

import numpy as np
import pytest
import redis

from shared.blobs import open_blob_store
from shared.errors import Conflict
from shared.schemas import ImageRecord, rendition_key, utcnow
from worker.store import Embedding, NewImage, WorkerStore

DIM = 8


def _image(n: int, job_id: str) -> NewImage:
    record = ImageRecord(
        image_id=f"{n:032x}", filename=f"{n}.jpg", format="JPEG", width=1, height=1, size=0,
        created_at=utcnow(), job_id=job_id,
    )  # fmt: skip
    vector = np.random.default_rng(n).standard_normal(DIM).astype(np.float32)
    return NewImage(record, vector / np.linalg.norm(vector), rendition=b"jpeg-bytes-%d" % n)


def test_an_add_with_another_model_is_refused_and_leaves_no_rendition(redis_client: redis.Redis) -> None:
    blobs = open_blob_store(f"file://{tempfile.mkdtemp(prefix='blobs-')}", fsync=False)
    store = WorkerStore(redis_client, blobs, log_maxlen=1000, data_ttl_s=600)
    collection = f"mismatch-{uuid.uuid4().hex[:8]}"
    first = _image(1, "job-a")
    assert store.add_images(collection, Embedding("model-a", "model-a@224", DIM), 0, [first]) == [1]

    other = _image(2, "job-b")
    with pytest.raises(Conflict) as refused:
        store.add_images(collection, Embedding("model-b", "model-b@224", DIM), 0, [other])
    assert refused.value.code == "model_mismatch" and "'model-a'" in refused.value.detail
    assert blobs.get_many([rendition_key(collection, other.record)]) == [None]  # nothing left unnamed
    assert blobs.get_many([rendition_key(collection, first.record)]) == [first.rendition]
    assert store.records(collection, [other.record.image_id]) == [None]
