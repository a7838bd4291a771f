"""Replica snapshots in the blob store, so that a worker (re)starting with a large collection loads
its approximate index instead of rebuilding it from every vector in Redis.

A snapshot is `AnnIndex.save`'s file plus, in Redis (`keys.snapshot`), the log position it
includes: the id of the last log entry applied and the collection version. A worker that loads
one replays the log after that position exactly as a running replica catches up; if the log no
longer reaches back that far (trimmed), or holds a re-embed, or Redis is older than the snapshot
(restored), the snapshot is ignored and the replica is rebuilt from the vectors. Redis stays the
source of truth: a snapshot only ever saves work.

Writing: after answering a search, a worker whose replica is approximate and `every` log entries
past the newest snapshot writes one (one writer per collection at a time, by a Redis lock; a
compare-and-set publishes only a newer one). The previous snapshot is kept until the next one is
published, so a worker reading the pointer just before an update still finds its blob.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from shared import keys
from shared.ann import AnnIndex, AnnParams, FetchVectors
from shared.blobs import BlobStore
from shared.collections import SCRIPTS as COLLECTION_SCRIPTS
from shared.collections import ops
from shared.runner import SyncRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotInfo:
    key: str
    version: int  # the shard's version the snapshot reflects
    last_id: str  # the last log entry it includes
    model: str
    dim: int
    count: int


class Snapshots:
    def __init__(self, client: redis.Redis, blobs: BlobStore, every: int, lock_ttl_s: int = 300) -> None:
        self.redis = client
        self.blobs = blobs
        self.every = every  # log entries applied since the newest snapshot before writing another
        self.lock_ttl_s = lock_ttl_s
        self.data = SyncRunner(client, COLLECTION_SCRIPTS)

    def latest(self, collection: str, shard: int = 0) -> SnapshotInfo | None:
        raw = self.data.run(ops.snapshot_pointer(collection, shard))
        try:
            return SnapshotInfo(
                key=raw["key"],
                version=int(raw["version"]),
                last_id=raw["last_id"],
                model=raw["model"],
                dim=int(raw["dim"]),
                count=int(raw["count"]),
            )
        except (KeyError, ValueError):
            return None

    def load(
        self, collection: str, fetch_vectors: FetchVectors, params: AnnParams, shard: int = 0
    ) -> tuple[SnapshotInfo, AnnIndex] | None:
        """The newest snapshot of the shard and its index, or None if there is none or it cannot be read."""
        for _ in range(2):  # the pointer may move on between reading it and reading its blob
            info = self.latest(collection, shard)
            if info is None:
                return None
            try:
                with tempfile.TemporaryDirectory(prefix="snapshot-") as folder:
                    path = Path(folder) / "snapshot.npz"
                    if not self.blobs.get_file(info.key, path):
                        continue
                    index = AnnIndex.load(path, fetch_vectors, params)
            except Exception as exc:
                # A snapshot that cannot be fetched or read (damaged, from another version, a
                # full disk) costs a rebuild from Redis, never a failed or wrong answer.
                log.warning("snapshot %s of %s unusable (%r); rebuilding instead", info.key, collection, exc)
                return None
            if index.dim != info.dim or len(index) != info.count:
                log.warning("snapshot %s of %s does not match its record; rebuilding instead", info.key, collection)
                return None
            return info, index
        return None

    def due(self, collection: str, version: int, index: AnnIndex, shard: int = 0, part: str = "") -> bool:
        """Whether a replica of the shard at `version` should write a snapshot now."""
        if index.exact or index.building:  # exact ones rebuild fast; a training will replace this one
            return False
        newest = self.latest(collection, shard)
        if newest is None or newest.dim != index.dim:  # none yet, or one of the vectors before a re-embed
            return True
        shard_version = self.data.run(ops.shard_header(collection, shard)).version
        # A snapshot from beyond the shard's version is from before Redis lost writes.
        return version - newest.version >= self.every or newest.version > shard_version

    def save(
        self,
        collection: str,
        model: str,
        version: int,
        last_id: str,
        index: AnnIndex,
        shard: int = 0,
        part: str = "",
    ) -> SnapshotInfo | None:
        """Write and publish a snapshot of a shard's `index` (at `version` / `last_id`); None if
        another worker is writing one or has published a newer one. `part` names the shard in the
        blob's key ("s3"; "" for an unsharded collection)."""
        lock = self.redis.lock(keys.snapshot_lock(collection, shard), timeout=self.lock_ttl_s, blocking=False)
        if not lock.acquire(blocking=False):
            return None
        try:
            started = time.perf_counter()
            info = SnapshotInfo(
                key=keys.snapshot_blob(collection, version, secrets.token_hex(4), part),
                version=version,
                last_id=last_id,
                model=model,
                dim=index.dim,
                count=len(index),
            )
            # Through a local file, streamed to the store: never the whole snapshot in memory.
            with tempfile.TemporaryDirectory(prefix="snapshot-") as folder:
                path = Path(folder) / "snapshot.npz"
                index.save(path)
                size = path.stat().st_size
                self.blobs.put_file(info.key, path)
            try:
                fields = [info.key, info.version, info.last_id, info.model, info.dim, info.count]
                stale = self.data.run(ops.publish_snapshot(collection, shard, fields))
            except BaseException:
                self.blobs.delete([info.key])  # not published: nothing will ever name it
                raise
            if stale is None:  # a newer one was published meanwhile
                self.blobs.delete([info.key])
                return None
            if stale:
                self.blobs.delete([stale])
            log.info(
                "snapshot of %s at version %d: %d vectors, %.0f MB in %.1fs",
                collection,
                version,
                info.count,
                size / 2**20,
                time.perf_counter() - started,
            )
            return info
        finally:
            with contextlib.suppress(redis.exceptions.LockError):  # expired meanwhile: nothing to release
                lock.release()
