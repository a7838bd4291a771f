"""The worker's reads and writes of collection data in Redis (jobs: `shared.jobs`)."""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from shared import keys, scripts, vectors
from shared.blobs import BlobStore
from shared.errors import Conflict
from shared.fanout import FanOutStore
from shared.schemas import ImageRecord, rendition_key, utcnow

log = logging.getLogger(__name__)

StreamEntry = tuple[bytes, dict[bytes, bytes]]


@dataclass(frozen=True)
class NewImage:
    record: ImageRecord  # with the adding job's id: it names the rendition's blob
    vector: np.ndarray | None  # None: the image was found in the collection; only confirm it
    rendition: bytes = b""


@dataclass(frozen=True)
class Embedding:
    """Who made a vector: the model name, its full identity (model@input size) and dimension."""

    model: str
    id: str
    dim: int


@dataclass(frozen=True)
class SwapResult:
    swapped: bool
    ours: bool  # False: the collection's re-embed is no longer this job's
    dropped: list[str]


def _s(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _f32(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


class WorkerStore(FanOutStore):
    def __init__(
        self, client: redis.Redis, blobs: BlobStore, log_maxlen: int, data_ttl_s: int, worker: str = "worker"
    ) -> None:
        super().__init__(client)  # the fan-out's keys (shared.fanout)
        self.blobs = blobs
        self.worker = worker
        self.log_maxlen = log_maxlen
        # Staged vectors and tombstones live as long as a job could (then they are moot).
        self.data_ttl_s = data_ttl_s
        # One thread: a chunk's renditions are written while its forward pass runs (put_many fans out).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="renditions")
        self._add_images = client.register_script(scripts.ADD_IMAGES)
        self._stage = client.register_script(scripts.STAGE_VECTORS)
        self._swap = client.register_script(scripts.SWAP_VECTORS)
        self._abort = client.register_script(scripts.ABORT_REEMBED)

    # -- images -----------------------------------------------------------------------------
    def existing_ids(self, collection: str, image_ids: list[str]) -> set[str]:
        if not image_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for image_id in image_ids:
            pipe.hexists(keys.images(collection), image_id)
        return {i for i, there in zip(image_ids, pipe.execute(), strict=True) if there}

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
        """Store images atomically. Per image: 1 created, 0 already there, 2 deleted after the job
        was queued (the delete wins). Raises Conflict when the collection holds another model.
        `writing`: the renditions' write started earlier by `write_renditions` (else written here)."""
        if not images:
            return []
        # Claim check: the rendition is in the blob store before any record names it.
        writing = writing or self.write_renditions(collection, [i for i in images if i.vector is not None])
        written = writing.result()
        args: list[Any] = [embedding.model, embedding.id, embedding.dim, self.log_maxlen, job_seq]
        args += [collection, utcnow(), self.data_ttl_s]
        for img in images:
            vector = b"" if img.vector is None else vectors.encode(img.vector)
            args += [img.record.image_id, img.record.model_dump_json(), vector, b""]
        out = self._add_images(
            keys=[
                keys.COLLECTIONS,
                keys.collection(collection),
                keys.images(collection),
                keys.vectors(collection),
                keys.thumbnails(collection),
                keys.log(collection),
                keys.order(collection),
                keys.staged_vectors(collection),
                *(keys.tombstone(collection, img.record.image_id) for img in images),
            ],
            args=args,
        )
        flags = [int(flag) for flag in out[1:]]
        named = {rendition_key(collection, img.record) for img, flag in zip(images, flags, strict=False) if flag == 1}
        self.blobs.delete([k for k in written if k not in named])  # not stored: nothing will name them
        if int(out[0]) == -2:
            self.blobs.delete(list(written))
            raise Conflict(
                f"collection {collection!r} was built with model {_s(out[1])!r}; this worker runs {embedding.model!r}",
                code="model_mismatch",
            )
        return flags

    def collection_model(self, collection: str) -> tuple[str | None, int | None]:
        model, dim, _ = self.collection_header(collection)
        return model, dim

    def collection_header(self, collection: str) -> tuple[str | None, int | None, int]:
        """(model, dimension, version) of the collection."""
        model, dim, version = self.redis.hmget(keys.collection(collection), "model", "dim", "version")
        return _s(model), (int(dim) if dim else None), int(version or 0)

    def stored_vector(self, collection: str, image_id: str) -> np.ndarray | None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(keys.vectors(collection), image_id)
        pipe.hget(keys.collection(collection), "dim")
        raw, dim = pipe.execute()
        return vectors.decode(raw, int(dim)) if raw and dim else None

    def filenames(self, collection: str, ids: list[str]) -> list[str]:
        if not ids:
            return []
        raw = self.redis.hmget(keys.images(collection), ids)
        return [ImageRecord.model_validate_json(r).filename if r else "" for r in raw]

    def metadata_of(self, collection: str, ids: list[str]) -> list[Any]:
        """Each image's user metadata (None when it has none or is gone): what filters read."""
        raw = self.redis.hmget(keys.images(collection), ids) if ids else []
        return [json.loads(r).get("metadata") if r else None for r in raw]

    # -- re-embedding -----------------------------------------------------------------------
    def records(self, collection: str, image_ids: list[str]) -> list[ImageRecord | None]:
        raw = self.redis.hmget(keys.images(collection), image_ids) if image_ids else []
        return [ImageRecord.model_validate_json(r) if r else None for r in raw]

    def renditions(self, collection: str, image_ids: list[str]) -> list[bytes | None]:
        """The stored renditions (None for images no longer in the collection)."""
        records = self.records(collection, image_ids)
        blob_keys = [rendition_key(collection, r) if r else None for r in records]
        found = iter(self.blobs.get_many([k for k in blob_keys if k]))
        legacy = [i for i, r, k in zip(image_ids, records, blob_keys, strict=True) if r and not k]
        old = dict(zip(legacy, self.redis.hmget(keys.thumbnails(collection), legacy), strict=True)) if legacy else {}
        return [next(found) if k else old.get(i) for i, k in zip(image_ids, blob_keys, strict=True)]

    def rendition_keys(self, collection: str, image_ids: list[str]) -> list[str]:
        return [k for r in self.records(collection, image_ids) if r and (k := rendition_key(collection, r))]

    def reembed_target(self, collection: str) -> tuple[str | None, str | None]:
        """(job id, embedding id) of the re-embed the collection is going through, if any."""
        job, embedding = self.redis.hmget(keys.collection(collection), "reembed_job", "reembed_embedding")
        return _s(job), _s(embedding)

    def stage_vectors(self, collection: str, job_id: str, image_ids: list[str], new_vectors: np.ndarray) -> int:
        """Stage new vectors for the collection's re-embed `job_id`; -1 if that is not its re-embed."""
        args: list[Any] = [self.data_ttl_s, job_id]
        for image_id, vector in zip(image_ids, new_vectors, strict=True):
            args += [image_id, vectors.encode(vector)]
        stage_keys = [keys.images(collection), keys.staged_vectors(collection), keys.collection(collection)]
        return int(self._stage(keys=stage_keys, args=args))

    def unstaged_ids(self, collection: str) -> list[str]:
        """Images without a staged vector (added during the re-embed by another embedding)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hkeys(keys.images(collection))
        pipe.hkeys(keys.staged_vectors(collection))
        live, staged = pipe.execute()
        return sorted(_s(i) for i in set(live) - set(staged))

    def swap_vectors(self, collection: str, job_id: str, embedding: Embedding, failed_ids: list[str]) -> SwapResult:
        out = self._swap(
            keys=[
                keys.collection(collection),
                keys.images(collection),
                keys.vectors(collection),
                keys.staged_vectors(collection),
                keys.thumbnails(collection),
                keys.labels(collection),
                keys.order(collection),
                keys.log(collection),
            ],
            args=[job_id, embedding.model, embedding.id, embedding.dim, self.log_maxlen, *failed_ids],
        )
        code = int(out[0])
        return SwapResult(swapped=code in (1, 2), ours=code != -1, dropped=[_s(i) for i in out[1:]])

    def abort_reembed(self, collection: str, job_id: str) -> bool:
        keys_ = [keys.collection(collection), keys.staged_vectors(collection)]
        return int(self._abort(keys=keys_, args=[job_id])) == 1

    # -- the change log (what replicas replay) ----------------------------------------------
    def log_position(self, collection: str) -> tuple[str, int]:
        """(id of the log's last entry or '0-0', the collection's version), read atomically."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xrevrange(keys.log(collection), count=1)
        pipe.hget(keys.collection(collection), "version")
        tail, version = pipe.execute()
        return (_s(tail[0][0]) if tail else "0-0"), int(version or 0)

    def log_after(self, collection: str, last_id: str, count: int) -> list[StreamEntry]:
        return self.redis.xrange(keys.log(collection), min=f"({last_id}", count=count)

    def scan_vectors(self, collection: str, cursor: int, count: int) -> tuple[int, dict[bytes, bytes]]:
        return self.redis.hscan(keys.vectors(collection), cursor, count=count)

    def collection_shards(self, collection: str) -> int:
        return int(self.redis.hget(keys.collection(collection), "shards") or 1)

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

    def vector_ids(self, collection: str) -> list[str]:
        return [_s(k) for k in self.redis.hkeys(keys.vectors(collection))]  # type: ignore[misc]

    def vector_count(self, collection: str) -> int:
        return int(self.redis.hlen(keys.vectors(collection)))

    def raw_vectors(self, collection: str, ids: list[str]) -> list[bytes | None]:
        return self.redis.hmget(keys.vectors(collection), ids) if ids else []

    # -- clusters ---------------------------------------------------------------------------
    def collection_version(self, collection: str) -> int:
        return int(self.redis.hget(keys.collection(collection), "version") or 0)

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
        old_k = int(self.redis.hget(keys.clustering(collection), "k") or 0)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.labels(collection), *(keys.cluster_members(collection, c) for c in range(max(old_k, 1))))
        items = list(labels.items())
        for start in range(0, len(items), 5000):
            pipe.hset(keys.labels(collection), mapping=dict(items[start : start + 5000]))
        for cluster, ids in enumerate(members):
            for start in range(0, len(ids), 5000):
                pipe.rpush(keys.cluster_members(collection, cluster), *ids[start : start + 5000])
        pipe.hset(
            keys.clustering(collection),
            mapping={
                "job_id": job_id,
                "k": summary["k"],
                "version": version,
                "created_at": summary["created_at"],
                "summary": json.dumps(summary),
                "centroids": _f32(centroids),
                "dim": centroids.shape[1],
            },
        )
        pipe.execute()

    def clustering_id(self, collection: str) -> str | None:
        return _s(self.redis.hget(keys.clustering(collection), "job_id"))

    def clustering_state(self, collection: str) -> tuple[str, np.ndarray, dict[str, int]] | None:
        job_id, k, dim, centroids = self.redis.hmget(keys.clustering(collection), "job_id", "k", "dim", "centroids")
        if job_id is None:
            return None
        matrix = np.frombuffer(centroids, dtype="<f4").reshape(int(k), int(dim))
        labels = {key.decode(): int(v) for key, v in self.redis.hgetall(keys.labels(collection)).items()}
        return job_id.decode(), matrix, labels

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
