"""One-shot migrations, in order: the per-shard key layout (`worker.migrate_layout`, issue 23), then
renditions stored in Redis (before the blob store) into the blob store:

    python -m worker.migrate [--batch 500]

For every collection, each rendition in `ss:c:{name}:thumbs` is written to the blob store, the
image's record is updated to name it (`job_id: "migrated"`), and the Redis copy is removed. Safe
to interrupt and run again: an image whose record already names a blob is skipped. Until it runs,
such collections keep working (their renditions are read from Redis).
"""

from __future__ import annotations

import argparse

import redis

from shared.blobs import BlobStore
from shared.collections import SCRIPTS as COLLECTION_SCRIPTS
from shared.collections import ops
from shared.runner import SyncRunner
from shared.schemas import ImageRecord, rendition_key
from shared.settings import CommonSettings
from worker.migrate_layout import legacy_collections, migrate_jobs
from worker.migrate_layout import migrate_collection as migrate_collection_layout

MIGRATED = "migrated"


def migrate_collection(client: redis.Redis, blobs: BlobStore, collection: str, batch: int) -> int:
    data = SyncRunner(client, COLLECTION_SCRIPTS)
    return sum(
        _migrate_shard(data, blobs, collection, shard, batch) for shard in range(data.run(ops.shard_count(collection)))
    )


def _migrate_shard(data: SyncRunner, blobs: BlobStore, collection: str, shard: int, batch: int) -> int:
    moved = 0
    cursor = 0
    while True:
        cursor, chunk = data.run(ops.scan_legacy_renditions(collection, shard, cursor, batch))
        ids = [k.decode() for k in chunk]
        records = data.run(ops.raw_records(collection, ids))
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
            data.run(ops.replace_records(collection, updates))
            moved += len(updates)
        data.run(ops.drop_legacy_renditions(collection, shard, ids))
        if cursor == 0:
            return moved


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    settings = CommonSettings()
    client = settings.redis()
    if not settings.redis_cluster:  # a cluster never held the old layout
        print(f"jobs and quota sets: {migrate_jobs(client)} keys moved")
        for name in legacy_collections(client):
            print(f"{name}: {migrate_collection_layout(client, name)}")
    with settings.open_blob_store() as blobs:
        for name in SyncRunner(client, COLLECTION_SCRIPTS).run(ops.names()):
            print(f"{name}: {migrate_collection(client, blobs, name, args.batch)} renditions moved")


if __name__ == "__main__":
    main()
