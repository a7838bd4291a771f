"""Runs the worker's job functions in the test process against a real Redis, with a deterministic
stand-in for the network, so that interleavings can be forced exactly (a hook runs in the middle
of a chunk). What matters in these tests is the bookkeeping, not embedding quality."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from api.store import ApiStore, Upload
from shared import keys
from shared.blobs import BlobStore, open_blob_store
from shared.blobs_async import AsyncBlobStore
from shared.collections import ops
from shared.connect import connect_async
from shared.imaging import content_id
from shared.jobs import JobLifecycle, Jobs
from shared.jobs.scripts import SCRIPTS as JOB_SCRIPTS
from shared.schemas import JobInput, JobType, JobView
from tests.integration.services import data_client, is_cluster
from worker.context import JobContext
from worker.ingest import indexing, reembedding
from worker.search.replica import ReplicaSet
from worker.store import WorkerStore

TTL = 3600


@dataclass
class PixelEmbedder:
    """Vector = a fixed random projection of the pixels, L2-normalised: same pixels, same vector."""

    name: str = "resnet50"
    dim: int = 2048
    input_size: int = 32
    before_embed: Callable[[], None] | None = None
    calls: int = 0
    _proj: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.input_size)
        self._proj = rng.standard_normal((self.input_size * self.input_size * 3, self.dim)).astype(np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.before_embed is not None:
            self.before_embed()
        x = images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.5
        v = x @ self._proj
        return v / np.linalg.norm(v, axis=1, keepdims=True)


class Harness:
    def __init__(self, redis_url: str, embedder: PixelEmbedder, log_maxlen: int = 100_000) -> None:
        self.redis_url = redis_url
        self.client = data_client(redis_url)
        self.embedder = embedder
        self.jobs = Jobs(self.client, JobLifecycle(TTL), JOB_SCRIPTS)
        self.blobs: BlobStore = open_blob_store(f"file://{tempfile.mkdtemp(prefix='blobs-')}", fsync=False)
        self.store = WorkerStore(self.client, self.blobs, log_maxlen, TTL)
        self.replicas = ReplicaSet(self.store, batch=50)
        self.log_maxlen = log_maxlen

    def context(self, job_id: str, embedder: PixelEmbedder | None = None) -> JobContext:
        record = self.jobs.load(job_id)
        assert record is not None
        return JobContext(record, self.jobs, self.store, embedder or self.embedder, self.replicas, 50_000_000)

    def submit(self, collection: str, files: list[tuple[str, bytes]]) -> str:
        """An index job as the API creates it (queued, not run)."""
        job_id = uuid.uuid4().hex
        inputs = [JobInput(filename=n, image_id=content_id(d), size=len(d)) for n, d in files]
        self.blobs.put_many({keys.upload_blob(job_id, i): d for i, (_, d) in enumerate(files)})
        self.jobs.create(job_id, JobType.index, collection, {"collection": collection}, inputs)
        return job_id

    def run_index(self, job_id: str, total: int, chunk: int = 32, embedder: PixelEmbedder | None = None) -> JobView:
        ctx = self.context(job_id, embedder)
        for start in range(0, total, chunk):
            indexing.index_chunk(ctx, list(range(start, min(start + chunk, total))))
        return self.jobs.get(job_id)

    def index(self, collection: str, files: list[tuple[str, bytes]], **kw) -> JobView:
        return self.run_index(self.submit(collection, files), len(files), **kw)

    def delete(self, collection: str, image_id: str) -> bool:
        return self.store.data.run(ops.delete_image(collection, image_id, self.log_maxlen, TTL)) is not None

    def rendition(self, collection: str, image_id: str) -> bytes | None:
        return self.store.renditions(collection, [image_id])[0]

    def set_rendition(self, collection: str, image_id: str, data: bytes) -> None:
        (key,) = self.store.rendition_keys(collection, [image_id])
        self.blobs.put(key, data)

    def begin_reembed(self, collection: str, embedding: str, model: str = "resnet50", dim: int = 2048) -> str:
        """What POST …/reembed does (through the API's own store code), without queueing."""

        async def begin() -> str:
            client = connect_async(self.redis_url, "", is_cluster(self.redis_url))
            try:
                store = ApiStore(client, AsyncBlobStore(self.blobs), TTL, self.log_maxlen)
                job_id = uuid.uuid4().hex
                ids = await store.begin_reembed(collection, job_id, embedding)
                assert isinstance(ids, list)
                uploads = [Upload(JobInput(filename="", image_id=i, size=0), None) for i in ids]
                params = {"collection": collection, "model": model, "dim": dim, "embedding": embedding}
                await store.create_job(job_id, JobType.reembed, collection, params, uploads)
                return job_id
            finally:
                await client.aclose()

        return asyncio.run(begin())

    def run_reembed(self, job_id: str, embedder: PixelEmbedder, chunk: int = 32) -> JobView:
        ctx = self.context(job_id, embedder)
        total = self.jobs.counts(job_id)[0]
        for start in range(0, total, chunk):
            reembedding.reembed_chunk(ctx, list(range(start, min(start + chunk, total))))
        return self.jobs.get(job_id)

    def shards(self, collection: str) -> int:
        return self.store.data.run(ops.shard_count(collection))

    def ids(self, collection: str) -> set[str]:
        """Every image id of every shard (asserting none is in two)."""
        per_shard = [self.client.hkeys(keys.images(collection, s)) for s in range(self.shards(collection))]
        found = [k.decode() for ids in per_shard for k in ids]
        assert len(found) == len(set(found)), "an image in two shards"
        return set(found)

    def vector_ids(self, collection: str) -> set[str]:
        return set(self.store.data.run(ops.vector_ids(collection)))
