"""One-shot migration of renditions stored in Redis (before the blob store) into the blob store:

    python -m worker.migrate [--batch 500]

For every collection, each rendition in `ss:c:{name}:thumbs` is written to the blob store, the
image's record is updated to name it (`job_id: "migrated"`), and the Redis copy is removed. Safe
to interrupt and run again: an image whose record already names a blob is skipped. Until it runs,
such collections keep working (their renditions are read from Redis).
"""

from __future__ import annotations

import argparse

import redis

from shared import keys
from shared.blobs import BlobStore
from shared.collections import SCRIPTS as COLLECTION_SCRIPTS
from shared.collections import ops
from shared.runner import SyncRunner
from shared.schemas import ImageRecord, rendition_key
from shared.settings import CommonSettings

MIGRATED = "migrated"


def migrate_collection(client: redis.Redis, blobs: BlobStore, collection: str, batch: int) -> int:
    moved = 0
    cursor = 0
    while True:
        cursor, chunk = client.hscan(keys.thumbnails(collection), cursor, count=batch)
        ids = [k.decode() for k in chunk]
        records = client.hmget(keys.images(collection), ids) if ids else []
        updates: dict[str, str] = {}
        for image_id, raw in zip(ids, records, strict=True):
            if raw is None:
                continue  # deleted meanwhile; its thumbnail is dropped below
            record = ImageRecord.model_validate_json(raw)
            if record.job_id is None:
                record.job_id = MIGRATED
                blobs.put(rendition_key(collection, record), chunk[image_id.encode()])
                updates[image_id] = record.model_dump_json()
        if updates:
            SyncRunner(client, COLLECTION_SCRIPTS).run(ops.replace_records(collection, updates))
            moved += len(updates)
        if ids:
            client.hdel(keys.thumbnails(collection), *ids)
        if cursor == 0:
            return moved


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    settings = CommonSettings()
    client = redis.Redis.from_url(settings.redis_url)
    with settings.open_blob_store() as blobs:
        for name in sorted(n.decode() for n in client.smembers(keys.COLLECTIONS)):
            print(f"{name}: {migrate_collection(client, blobs, name, args.batch)} renditions moved")


if __name__ == "__main__":
    main()
