"""Collections indexed before the blob store keep working, and `python -m worker.migrate` moves
their renditions out of Redis."""

from __future__ import annotations

import uuid

from shared import keys
from shared.schemas import ImageRecord, utcnow
from tests.images import photo_bytes
from tests.integration.inprocess import Harness, PixelEmbedder
from worker.migrate import migrate_collection


def test_renditions_move_from_redis_to_the_blob_store(redis_url: str) -> None:
    h = Harness(redis_url, PixelEmbedder())
    name = f"old-{uuid.uuid4().hex[:6]}"
    h.index(name, [("new.jpg", photo_bytes(36000))])  # indexed today: its rendition is a blob
    legacy = {f"{i:032x}": photo_bytes(36100 + i, size=(64, 48)) for i in range(3)}
    for image_id, jpeg in legacy.items():  # as the previous version stored them
        record = ImageRecord(
            image_id=image_id, filename="x.jpg", format="JPEG", width=64, height=48, size=1, created_at=utcnow()
        )
        h.client.hset(keys.images(name, 0), image_id, record.model_dump_json())
        h.client.hset(keys.thumbnails(name, 0), image_id, jpeg)
    gone = next(iter(legacy))
    h.client.hdel(keys.images(name, 0), gone)  # deleted before the migration: must not come back
    ids = list(legacy)
    assert h.store.renditions(name, ids) == [None, legacy[ids[1]], legacy[ids[2]]]  # read from Redis

    assert migrate_collection(h.client, h.blobs, name, batch=2) == 2
    assert not h.client.exists(keys.thumbnails(name, 0))
    assert h.store.renditions(name, ids) == [None, legacy[ids[1]], legacy[ids[2]]]  # now from blobs
    assert not h.client.hexists(keys.images(name, 0), gone)
    assert migrate_collection(h.client, h.blobs, name, batch=2) == 0  # a second run changes nothing
