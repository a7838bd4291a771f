"""The worker's reads and writes in Redis (synchronous client)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from shared import keys, scripts
from shared.errors import Conflict
from shared.jobs import index_result, job_params
from shared.schemas import ImageRecord, ItemError, ItemOutcome, JobInput, JobStatus, utcnow


@dataclass(frozen=True)
class NewImage:
    record: ImageRecord
    vector: np.ndarray
    thumbnail: bytes


class WorkerStore:
    def __init__(self, client: redis.Redis, job_ttl_s: int, log_maxlen: int, worker: str = "worker") -> None:
        self.redis = client
        self.worker = worker
        self.job_ttl_s = job_ttl_s
        self.log_maxlen = log_maxlen
        self._record_items = client.register_script(scripts.RECORD_ITEMS)
        self._mark_running = client.register_script(scripts.MARK_RUNNING)
        self._finish_job = client.register_script(scripts.FINISH_JOB)
        self._add_images = client.register_script(scripts.ADD_IMAGES)

    # -- jobs -------------------------------------------------------------------------------
    def job_params(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(keys.job(job_id))
        return job_params(raw) if raw else None

    def job_counts(self, job_id: str) -> tuple[int, int]:
        total, failed = self.redis.hmget(keys.job(job_id), "total", "failed")
        return int(total or 0), int(failed or 0)

    def mark_running(self, job_id: str) -> None:
        self._mark_running(keys=[keys.job(job_id)], args=[utcnow()])

    def count_attempt(self, job_id: str, what: str) -> int:
        """How many times this chunk or item has been started (this time included)."""
        key = keys.job_attempts(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(key, what, 1)
        pipe.expire(key, self.job_ttl_s)
        return int(pipe.execute()[0])

    def unrecorded(self, job_id: str, indices: list[int]) -> list[int]:
        raw = self.redis.hmget(keys.job_items(job_id), [str(i) for i in indices])
        return [i for i, r in zip(indices, raw, strict=True) if r is None]

    def inputs(self, job_id: str, indices: list[int]) -> list[JobInput | None]:
        raw = self.redis.hmget(keys.job_inputs(job_id), [str(i) for i in indices])
        return [JobInput.model_validate_json(r) if r else None for r in raw]

    def upload(self, job_id: str, index: int) -> bytes | None:
        return self.redis.get(keys.upload(job_id, index))

    def drop_uploads(self, job_id: str, indices: list[int]) -> None:
        if indices:
            self.redis.delete(*(keys.upload(job_id, i) for i in indices))

    def record_items(self, job_id: str, outcomes: list[tuple[ItemOutcome, ItemError | None]]) -> int:
        """Returns 1 when every item of the job is now accounted for, 0 if not, -1 if the job is gone."""
        args: list[Any] = [self.job_ttl_s]
        for outcome, error in outcomes:
            args += [str(outcome.index), outcome.model_dump_json(), error.model_dump_json() if error else ""]
        return int(
            self._record_items(keys=[keys.job(job_id), keys.job_items(job_id), keys.job_errors(job_id)], args=args)
        )

    def finish_job(self, job_id: str, status: JobStatus, result: dict[str, Any]) -> bool:
        done = self._finish_job(
            keys=[keys.job(job_id), keys.JOB_COUNTS],
            args=[status.value, json.dumps(result), utcnow(), keys.job_done_channel(job_id)],
        )
        return int(done) == 1

    def index_result(self, job_id: str) -> dict[str, Any]:
        return index_result(self.redis.hgetall(keys.job_items(job_id)))

    # -- collections ------------------------------------------------------------------------
    def existing_ids(self, collection: str, image_ids: list[str]) -> set[str]:
        if not image_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for image_id in image_ids:
            pipe.hexists(keys.images(collection), image_id)
        return {i for i, there in zip(image_ids, pipe.execute(), strict=True) if there}

    def collection_model(self, collection: str) -> tuple[str | None, int | None]:
        model, dim = self.redis.hmget(keys.collection(collection), "model", "dim")
        return (model.decode() if model else None), (int(dim) if dim else None)

    def add_images(self, collection: str, model: str, dim: int, images: list[NewImage]) -> list[bool]:
        """Store images atomically; per image True if created, False if it was already there."""
        if not images:
            return []
        args: list[Any] = [model, dim, self.log_maxlen]
        for img in images:
            vec = np.ascontiguousarray(img.vector, dtype="<f4")
            args += [img.record.image_id, img.record.model_dump_json(), vec.tobytes(), img.thumbnail]
        out = self._add_images(
            keys=[
                keys.collection(collection),
                keys.images(collection),
                keys.vectors(collection),
                keys.thumbnails(collection),
                keys.log(collection),
                keys.order(collection),
            ],
            args=args,
        )
        if int(out[0]) == -2:
            other = out[1].decode() if isinstance(out[1], bytes) else out[1]
            raise Conflict(
                f"collection {collection!r} was built with model {other!r}; this worker runs {model!r}",
                code="model_mismatch",
            )
        return [bool(flag) for flag in out[1:]]

    def stored_vector(self, collection: str, image_id: str) -> np.ndarray | None:
        raw = self.redis.hget(keys.vectors(collection), image_id)
        return np.frombuffer(raw, dtype="<f4").copy() if raw else None

    # -- re-embedding -----------------------------------------------------------------------
    def thumbnails(self, collection: str, image_ids: list[str]) -> list[bytes | None]:
        return self.redis.hmget(keys.thumbnails(collection), image_ids) if image_ids else []

    def stage_vectors(self, collection: str, image_ids: list[str], vectors: np.ndarray) -> None:
        staged = keys.staged_vectors(collection)
        mapping = {i: np.ascontiguousarray(v, dtype="<f4").tobytes() for i, v in zip(image_ids, vectors, strict=True)}
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(staged, mapping=mapping)
        pipe.expire(staged, self.job_ttl_s)  # an abandoned re-embed must not leak its vectors
        pipe.execute()

    def swap_vectors(self, collection: str, model: str, dim: int) -> list[str]:
        """Make the staged vectors the collection's. Images without a new vector (their re-embed
        failed) leave the collection and are returned; staged vectors of images deleted meanwhile
        are discarded."""
        staged = {k.decode() for k in self.redis.hkeys(keys.staged_vectors(collection))}
        current = {k.decode() for k in self.redis.hkeys(keys.images(collection))}
        if stale := staged - current:
            self.redis.hdel(keys.staged_vectors(collection), *stale)
        dropped = sorted(current - staged)
        delete = self.redis.register_script(scripts.DELETE_IMAGE)
        for image_id in dropped:
            delete(
                keys=keys.delete_image_keys(collection),
                args=[image_id, self.log_maxlen],
            )
        swap = self.redis.register_script(scripts.SWAP_VECTORS)
        swap(
            keys=[
                keys.collection(collection),
                keys.vectors(collection),
                keys.staged_vectors(collection),
                keys.log(collection),
            ],
            args=[model, dim, self.log_maxlen],
        )
        return dropped

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
                "centroids": np.ascontiguousarray(centroids, dtype="<f4").tobytes(),
                "dim": centroids.shape[1],
            },
        )
        pipe.execute()

    def clustering_id(self, collection: str) -> str | None:
        value = self.redis.hget(keys.clustering(collection), "job_id")
        return value.decode() if value else None

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
