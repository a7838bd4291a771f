"""The worker's reads and writes of collection data in Redis (jobs: `shared.jobs`)."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from shared import keys, vectors
from shared.blobs import BlobStore
from shared.collections import SCRIPTS as COLLECTION_SCRIPTS
from shared.collections import CollectionHeader, ops
from shared.collections.header import ShardHeader
from shared.collections.ops import Embedding
from shared.errors import Conflict
from shared.fanout import FanOutStore, f32_bytes
from shared.runner import SyncRunner, text
from shared.schemas import ImageRecord, rendition_key, utcnow
from shared.shards import shard_of

log = logging.getLogger(__name__)

StreamEntry = tuple[bytes, dict[bytes, bytes]]


@dataclass(frozen=True)
class NewImage:
    record: ImageRecord  # with the adding job's id: it names the rendition's blob
    vector: np.ndarray | None  # None: the image was found in the collection; only confirm it
    rendition: bytes = b""


@dataclass(frozen=True)
class SwapResult:
    swapped: bool
    ours: bool  # False: the collection's re-embed is no longer this job's
    dropped: list[str]


def _encoded(image: NewImage) -> bytes:
    return b"" if image.vector is None else vectors.encode(image.vector)


class WorkerStore(FanOutStore):
    def __init__(
        self,
        client: redis.Redis,
        blobs: BlobStore,
        log_maxlen: int,
        data_ttl_s: int,
        worker: str = "worker",
        replicas: tuple[int, int, float] = (0, 1000, 300.0),
    ) -> None:
        super().__init__(client)  # the fan-out's keys (shared.fanout)
        self.blobs = blobs
        self.worker = worker
        self.log_maxlen = log_maxlen
        # Staged vectors and tombstones live as long as a job could (then they are moot).
        self.data_ttl_s = data_ttl_s
        # Replicas an add must reach before its images count as stored, the WAIT's timeout (ms), and
        # how long to keep waiting for them (s) before the task is handled as in a Redis outage.
        self.replicas = replicas
        # One thread: a chunk's renditions are written while its forward pass runs (put_many fans out).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="renditions")
        self.data = SyncRunner(client, COLLECTION_SCRIPTS)  # collection storage (shared.collections.ops)

    # -- images -----------------------------------------------------------------------------
    def existing_ids(self, collection: str, image_ids: list[str]) -> set[str]:
        return set(self.data.run(ops.existing(collection, image_ids)))

    def write_renditions(self, collection: str, images: list[NewImage]) -> Future[dict[str, bytes]]:
        """Start writing the images' renditions to the blob store, in the background (a chunk's
        forward pass hides the writes and their fsyncs); `add_images` waits for them."""
        written = {
            key: img.rendition
            for img in images
            if img.rendition and (key := rendition_key(collection, img.record)) is not None
        }

        def put() -> dict[str, bytes]:
            try:
                self.blobs.put_many(written)
            except BaseException:
                self.blobs.delete(list(written))  # some may have landed; no record will name them
                raise
            return written

        return self._writer.submit(put)

    def discard_renditions(self, writing: Future[dict[str, bytes]]) -> None:
        """The chunk will not be stored: delete what `write_renditions` wrote (nothing names it)."""
        try:
            written = writing.result()
        except Exception:  # the write failed and cleaned up after itself
            log.warning("writing renditions failed", exc_info=True)
            return
        self.blobs.delete(list(written))

    def add_images(
        self,
        collection: str,
        embedding: Embedding,
        job_seq: int,
        images: list[NewImage],
        writing: Future[dict[str, bytes]] | None = None,
    ) -> list[int]:
        """Store images (atomically per shard). Per image: 1 created, 0 already there, 2 deleted after the job
        was queued (the delete wins). Raises Conflict when the collection holds another model.
        `writing`: the renditions' write started earlier by `write_renditions` (else written here)."""
        if not images:
            return []
        # Claim check: the rendition is in the blob store before any record names it.
        writing = writing or self.write_renditions(collection, [i for i in images if i.vector is not None])
        written = writing.result()
        other, flags = self._add(collection, embedding, job_seq, images)
        # Images this job's item stored on an earlier run (redelivered, or after ReplicationTimeout)
        # are its own: reported created, and their renditions kept.
        flags, stored = self.data.run(ops.own_adds(collection, [img.record for img in images], flags))
        # Renditions named by a record: this add's, and those of images stored before under the same
        # key (the same bytes from another item of this job) -- never deleted below.
        named = {rendition_key(collection, img.record) for img, flag in zip(images, flags, strict=False) if flag == 1}
        named |= {rendition_key(collection, record) for record in stored if record is not None}
        self.blobs.delete([k for k in written if k not in named])  # not stored: nothing will name them
        if other is not None:
            raise Conflict(
                f"collection {collection!r} was built with model {other!r}; this worker runs {embedding.model!r}",
                code="model_mismatch",
            )
        return flags

    def _add(
        self, collection: str, embedding: Embedding, job_seq: int, images: list[NewImage]
    ) -> tuple[str | None, list[int]]:
        """The model claim, then each shard's add with its own script (one slot each), then the
        collection's listing. A worker that dies between two steps leaves what a rerun of the
        chunk completes: images found stored by this job count as its own (`own_adds`)."""
        other = self.data.run(ops.claim_model(collection, embedding, utcnow()))
        if other is not None:
            return other, [0] * len(images)
        shards = self.data.run(ops.shard_count(collection))
        flags = [0] * len(images)  # 0 for an image not written: its rendition is not kept
        by_shard: dict[int, list[int]] = {}
        for i, img in enumerate(images):
            by_shard.setdefault(shard_of(img.record.image_id, shards), []).append(i)
        for shard, positions in by_shard.items():
            items = [ops.AddItem(images[i].record, _encoded(images[i])) for i in positions]
            add = ops.add_images(
                collection, shard, embedding, job_seq, items, self.log_maxlen, self.data_ttl_s, *self.replicas[:2]
            )
            try:
                other, shard_flags = self.data.run(add)
            except ops.ReplicationTimeout as short:
                self._await_replicas(short)
                other, shard_flags = short.result
            if other is not None:  # this shard holds another model: the shards written keep theirs
                return other, flags
            for i, flag in zip(positions, shard_flags, strict=True):
                flags[i] = flag
        if 0 in flags or 1 in flags:  # images in it (a rerun finds its own as 0): listed, idempotently
            self.data.run(ops.list_collection(collection))
        return None, flags

    def _await_replicas(self, short: ops.ReplicationTimeout) -> None:
        """Wait (backing off, at most the replicas' patience) until enough replicas hold the
        primary's stream up to the add; else raise `short` again."""
        wanted, _, patience_s = self.replicas
        deadline, delay = time.monotonic() + patience_s, 0.05
        while time.monotonic() < deadline:
            info = self.data.node_info(short.key, "replication")
            if short.replid and text(info.get("master_replid")) != short.replid:
                # Another primary since the add (a failover): its offsets count another history, and
                # its replicas passing the old offset says nothing of the add, which the new primary
                # may lack. Handled as an outage: the chunk runs again and adds what is missing.
                log.warning("the primary changed while waiting for replicas of %s; running again", short.key)
                raise short
            if ops.replicas_at(info, short.offset) >= wanted:
                return
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)
        raise short

    def header(self, collection: str) -> CollectionHeader:
        return self.data.run(ops.header(collection))

    def collection_model(self, collection: str) -> str | None:
        return self.data.run(ops.model(collection))

    def shard_state(self, collection: str, shard: int) -> ShardHeader:
        """One shard's header (model, embedding, dimension, version): what its replicas follow."""
        return self.data.run(ops.shard_header(collection, shard))

    def shard_position(self, collection: str, shard: int) -> tuple[ShardHeader, str]:
        """The shard's header and its log's last entry id, in one round trip."""
        return self.data.run(ops.shard_position(collection, shard))

    def stored_vector(self, collection: str, image_id: str, shards: int | None = None) -> np.ndarray | None:
        """`shards`: the collection's shard count, where the caller has read it already."""
        raw, dim = self.data.run(ops.stored_vector(collection, image_id, shards))
        return vectors.decode(raw, dim) if raw and dim else None

    def filenames(self, collection: str, ids: list[str], shards: int | None = None) -> list[str]:
        return self.data.run(ops.filenames(collection, ids, shards))

    def metadata_of(self, collection: str, ids: list[str]) -> list[Any]:
        """Each image's user metadata (None when it has none or is gone): what filters read."""
        return self.data.run(ops.metadata_of(collection, ids))

    # -- re-embedding -----------------------------------------------------------------------
    def records(self, collection: str, image_ids: list[str]) -> list[ImageRecord | None]:
        return self.data.run(ops.records(collection, image_ids))

    def renditions(self, collection: str, image_ids: list[str]) -> list[bytes | None]:
        """The stored renditions (None for images no longer in the collection)."""
        records = self.records(collection, image_ids)
        blob_keys = [rendition_key(collection, r) if r else None for r in records]
        found = iter(self.blobs.get_many([k for k in blob_keys if k]))
        legacy = [i for i, r, k in zip(image_ids, records, blob_keys, strict=True) if r and not k]
        old = dict(zip(legacy, self.data.run(ops.legacy_renditions(collection, legacy)), strict=True))
        return [next(found) if k else old.get(i) for i, k in zip(image_ids, blob_keys, strict=True)]

    def rendition_keys(self, collection: str, image_ids: list[str]) -> list[str]:
        return [k for r in self.records(collection, image_ids) if r and (k := rendition_key(collection, r))]

    def reembed_target(self, collection: str) -> tuple[str | None, str | None]:
        """(job id, embedding id) of the re-embed the collection is going through, if any."""
        header = self.header(collection)
        return header.reembed_job, header.reembed_embedding

    def stage_vectors(self, collection: str, job_id: str, image_ids: list[str], new_vectors: np.ndarray) -> int:
        """Stage new vectors for the collection's re-embed `job_id`; -1 if that is not its re-embed."""
        pairs = [(i, vectors.encode(v)) for i, v in zip(image_ids, new_vectors, strict=True)]
        return self.data.run(ops.stage_vectors(collection, job_id, pairs, self.data_ttl_s))

    def unstaged_ids(self, collection: str, job_id: str) -> list[str]:
        """Images without a staged vector (added during the re-embed by another embedding)."""
        return self.data.run(ops.unstaged_ids(collection, job_id))

    def swap_vectors(self, collection: str, job_id: str, embedding: Embedding, failed_ids: list[str]) -> SwapResult:
        code, dropped = self.data.run(ops.swap_vectors(collection, job_id, embedding, failed_ids, self.log_maxlen))
        return SwapResult(swapped=code in (1, 2), ours=code != -1, dropped=dropped)

    def abort_reembed(self, collection: str, job_id: str) -> int:
        """1 released, 0 not this job's, -1 refused: its swap has begun (it can only be finished)."""
        return self.data.run(ops.abort_reembed(collection, job_id))

    # -- the change log (what replicas replay) ----------------------------------------------
    def log_position(self, collection: str, shard: int) -> tuple[str, int]:
        """(id of the shard log's last entry or '0-0', the shard's version), read atomically."""
        return self.data.run(ops.log_position(collection, shard))

    def log_after(self, collection: str, shard: int, last_id: str, count: int) -> list[StreamEntry]:
        return self.data.run(ops.log_after(collection, shard, last_id, count))

    def scan_vectors(self, collection: str, shard: int, cursor: int, count: int) -> tuple[int, dict[bytes, bytes]]:
        return self.data.run(ops.scan_vectors(collection, shard, cursor, count))

    def collection_shards(self, collection: str) -> int:
        return self.data.run(ops.shard_count(collection))

    def put_results(self, job_id: str, rows: dict[str, str], ttl_s: int) -> None:
        """A batch search's answers by query index (the same values if a chunk runs twice)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.job_results(job_id), mapping=rows)
        pipe.expire(keys.job_results(job_id), ttl_s)
        pipe.execute()

    def settle_results(self, job_id: str, owner: str, ttl_s: int) -> int:
        """Replace the reservation of a finished batch search's results (api/fairness.py) by the
        bytes they hold in Redis."""
        size = int(self.redis.memory_usage(keys.job_results(job_id), samples=0) or 0)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(keys.owner_results(owner), {job_id: size})
        pipe.expire(keys.owner_results(owner), ttl_s)
        pipe.execute()
        return size

    def vector_ids(self, collection: str, shard: int | None = None) -> list[str]:
        """Ids with a vector: of one shard, or of the whole collection."""
        return self.data.run(ops.vector_ids(collection, ordered=False, shard=shard))

    def vector_count(self, collection: str, shard: int) -> int:
        return self.data.run(ops.vector_count(collection, shard))

    def raw_vectors(self, collection: str, ids: list[str], shard: int | None = None) -> list[bytes | None]:
        return self.data.run(ops.raw_vectors(collection, ids, shard))

    # -- clusters ---------------------------------------------------------------------------
    def collection_version(self, collection: str) -> int:
        return self.data.run(ops.version(collection))

    def save_clustering(
        self,
        collection: str,
        job_id: str,
        summary: dict[str, Any],
        labels: dict[str, int],
        members: list[list[str]],
        centroids: np.ndarray,
        version: int,
    ) -> None:
        """Replace the collection's clustering in one transaction: readers see the old or the new."""
        fields = {
            "job_id": job_id,
            "k": summary["k"],
            "version": version,
            "created_at": summary["created_at"],
            "summary": json.dumps(summary),
            "centroids": f32_bytes(centroids),
            "dim": centroids.shape[1],
        }
        self.data.run(ops.save_clustering(collection, fields, labels, members))

    def clustering_id(self, collection: str) -> str | None:
        return self.data.run(ops.clustering_id(collection))

    def clustering_state(self, collection: str) -> tuple[str, np.ndarray, dict[str, int]] | None:
        state = self.data.run(ops.clustering_state(collection))
        return None if state is None else (state.job_id, state.centroids, state.labels)

    # -- metrics ----------------------------------------------------------------------------
    def record_embedding(self, images: int, seconds: float, created: int) -> None:
        """Counters the API's /metrics exposes per worker process; they expire if the worker does."""
        key = keys.worker_metrics(self.worker)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(key, "batches", 1)
        pipe.hincrby(key, "images", images)
        pipe.hincrby(key, "images_indexed", created)
        pipe.hincrbyfloat(key, "embed_seconds", seconds)
        pipe.hset(key, mapping={"last_batch_seconds": seconds, "last_images_per_second": images / max(seconds, 1e-9)})
        pipe.expire(key, 24 * 3600)
        pipe.execute()
