"""The API's reads and writes in Redis (asyncio client)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from api.turns import Turns
from shared import filters, keys, vectors
from shared.blobs_async import AsyncBlobStore
from shared.collections import SCRIPTS as COLLECTION_SCRIPTS
from shared.collections import ops
from shared.errors import Conflict
from shared.fanout import f32_bytes
from shared.filters import Filter
from shared.jobs import AsyncJobs, JobLifecycle
from shared.jobs.lifecycle import CANCELLED
from shared.jobs.scripts import SCRIPTS as JOB_SCRIPTS
from shared.runner import AsyncRunner
from shared.schemas import (
    CollectionInfo,
    ImageRecord,
    JobInput,
    JobStatus,
    JobType,
    JobView,
    rendition_key,
    utcnow,
)


@dataclass(frozen=True)
class Upload:
    input: JobInput
    data: bytes | None  # None when the API rejected the item already


def _passing(node: Filter, raw: list[bytes | None]) -> list[bytes]:
    return [r for r in raw if r and filters.matches(node, json.loads(r).get("metadata"))]


class ApiStore:
    def __init__(
        self, client: Redis, blobs: AsyncBlobStore, job_ttl_s: int, log_maxlen: int, tombstone_ttl_s: int = 86400
    ) -> None:
        self.redis = client
        self.blobs = blobs
        self.job_ttl_s = job_ttl_s
        self.tombstone_ttl_s = tombstone_ttl_s
        self.log_maxlen = log_maxlen
        self.jobs = AsyncJobs(client, JobLifecycle(job_ttl_s), JOB_SCRIPTS)
        self.data = AsyncRunner(client, COLLECTION_SCRIPTS)  # collection storage (shared.collections.ops)
        self._scans = Turns()  # filtered listings: one at a time per requester (api/turns.py)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # -- jobs -------------------------------------------------------------------------------
    async def create_job(
        self, job_id: str, job_type: JobType, collection: str, params: dict[str, Any], uploads: list[Upload]
    ) -> None:
        """Store the uploaded bytes (blob store), then the job and its inputs (Redis), before anything
        is queued: a task never names bytes that are not there. The collection itself comes into
        being with its first image (a batch whose files all fail leaves none). Bytes of a job that
        never gets created expire with the upload sweep."""
        data = {keys.upload_blob(job_id, i): u.data for i, u in enumerate(uploads) if u.data is not None}
        if data:
            await self.blobs.put_many(data)
        await self.jobs.create(job_id, job_type, collection, params, [u.input for u in uploads])

    async def create_job_with_sources(
        self,
        job_id: str,
        collection: str,
        params: dict[str, Any],
        uploads: list[Upload],
        sources: list[tuple[dict[str, Any], Path | None]],
        job_type: JobType = JobType.index,
    ) -> None:
        """An index job that workers grow: `sources` are (spec, file to store or None), e.g. an
        archive or a URL list (stored as a source blob), or a bucket prefix (nothing to store)."""
        for number, (_, path) in enumerate(sources):
            if path is not None:
                await self.blobs.put_file(keys.source_blob(job_id, number), path)
        data = {keys.upload_blob(job_id, i): u.data for i, u in enumerate(uploads) if u.data is not None}
        if data:
            await self.blobs.put_many(data)
        params = {**params, "sources": [spec for spec, _ in sources]}
        inputs = [u.input for u in uploads]
        await self.jobs.create(job_id, job_type, collection, params, inputs, sources=len(sources))

    async def results(self, job_id: str, offset: int, limit: int) -> list[bytes | None]:
        """A batch search's answers for queries offset..offset+limit, as the JSON the workers
        wrote (None: failed or not yet): passed on unparsed, so a page of k=1000 rows costs the
        API its bytes, not a million Python objects built and serialised again on the event loop."""
        fields = [str(i) for i in range(offset, offset + limit)]
        return await self.redis.hmget(keys.job_results(job_id), fields) if fields else []

    async def delete_job(self, job_id: str) -> None:
        """A finished job, its results, its place in its owner's result bytes and any pending callback."""
        owner = await self.redis.hget(keys.job(job_id), "owner")
        await self.redis.delete(*keys.job_keys(job_id))  # one slot: the job's
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(keys.WEBHOOKS_DUE, job_id)
        if owner:
            pipe.zrem(keys.owner_results(owner.decode()), job_id)
        await pipe.execute()

    async def cancel_job(self, job: JobView) -> None:
        """End an open job as cancelled (the first finisher wins: one that just ended keeps its end);
        a re-embed lets go of its collection."""
        # A re-embed lets go of its collection first: once its shards have begun to swap it can
        # only be finished (a cancel then would leave the collection half swapped).
        if job.type is JobType.reembed and await self.abort_reembed(job.collection, job.job_id) == -1:
            raise Conflict(
                f"re-embed job {job.job_id!r} is swapping the collection's vectors; it can only finish",
                code="reembed_swapping",
            )
        result = {"error": CANCELLED, "detail": "cancelled by request"}
        await self.jobs.finish(job.job_id, JobStatus.failed, result)

    async def get_job(self, job_id: str) -> JobView | None:
        return await self.jobs.get(job_id)

    # -- collections ------------------------------------------------------------------------
    async def collection_exists(self, name: str) -> bool:
        return await self.data.run(ops.exists(name))

    async def collections(self) -> list[CollectionInfo]:
        names = await self.data.run(ops.names())
        return [info for name in names if (info := await self.collection(name)) is not None]

    async def collection(self, name: str) -> CollectionInfo | None:
        found = await self.data.run(ops.listed(name))
        if found is None:
            return None
        header, count = found
        return CollectionInfo(
            name=name,
            image_count=count,
            model=header.model,
            dimension=header.dim,
            created_at=header.created_at,
            shards=header.shards,
            shard_counts=list(header.shard_counts) or [count],
        )

    async def put_query(self, job_id: str, collection: str, image_id: str) -> bool:
        """Store a stored image's vector as a fanned-out search's query (float32, as the worker
        would): the shards then need no dispatching worker. False if the image is gone."""
        raw, dim = await self.data.run(ops.stored_vector(collection, image_id))
        if not raw or not dim:
            return False
        query = f32_bytes(vectors.decode(raw, dim))
        await self.redis.set(keys.job_query(job_id), query, ex=self.job_ttl_s)
        return True

    async def create_collection(self, name: str, shards: int) -> tuple[bool, int]:
        """Create an empty collection with `shards` shards: (created, the shards it has)."""
        return await self.data.run(ops.create(name, shards, utcnow()))

    async def image(self, collection: str, image_id: str) -> ImageRecord | None:
        (record,) = await self.data.run(ops.records(collection, [image_id]))
        return record

    async def rendition(self, collection: str, image_id: str) -> bytes | None:
        record = await self.image(collection, image_id)
        if record is None:
            return None
        key = rendition_key(collection, record)
        if key is None:  # indexed before renditions moved to the blob store
            (legacy,) = await self.data.run(ops.legacy_renditions(collection, [image_id]))
            return legacy
        return await self.blobs.get(key)

    async def image_page(self, collection: str, offset: int, limit: int) -> tuple[int, list[ImageRecord]]:
        """Images in the order they were added."""
        return await self.data.run(ops.page(collection, offset, limit))

    async def filtered_page(
        self, collection: str, node: Filter, offset: int, limit: int, requester: str = "", batch: int = 5000
    ) -> tuple[int, list[ImageRecord]]:
        """The images whose metadata passes the filter, in the order they were added: a scan of
        the collection (its records a batch at a time, tested in a thread), so `total` is exact.
        Scans take turns per requester (`_scans`): they hold the GIL, and many at once would
        starve the API, but one tenant's scans must not queue another's."""
        async with self._scans.turn(requester):
            return await self._filtered_page(collection, node, offset, limit, batch)

    async def _filtered_page(
        self, collection: str, node: Filter, offset: int, limit: int, batch: int
    ) -> tuple[int, list[ImageRecord]]:
        total, page, start = 0, [], 0
        while True:
            ids = await self.data.run(ops.order_ids(collection, start, batch))
            if not ids:
                return total, page
            start += len(ids)
            raw = await self.data.run(ops.raw_records(collection, ids))
            passed = await anyio.to_thread.run_sync(_passing, node, raw)
            wanted = passed[max(0, offset - total) : max(0, offset + limit - total)]
            page.extend(ImageRecord.model_validate_json(r) for r in wanted)
            total += len(passed)

    async def existing(self, collection: str, image_ids: list[str]) -> list[str]:
        return await self.data.run(ops.existing(collection, image_ids))

    async def image_exists(self, collection: str, image_id: str, shards: int | None = None) -> bool:
        """`shards`: the collection's shard count where the caller has read it (one read fewer)."""
        return bool(await self.data.run(ops.existing(collection, [image_id], shards)))

    async def delete_image(self, collection: str, image_id: str) -> bool:
        """Delete now; index jobs created before this call will not bring the image back, also
        when the image is not stored yet because its job is still queued (then False: 404)."""
        deleted = await self.data.run(ops.delete_image(collection, image_id, self.log_maxlen, self.tombstone_ttl_s))
        if deleted is None:
            return False
        if (key := rendition_key(collection, deleted)) is not None:
            await self.blobs.delete([key])
        return True

    async def begin_reembed(self, collection: str, job_id: str, embedding: str) -> list[str] | str:
        """The ids to re-embed, or the id of a re-embed still running (one script: two requests
        cannot both start)."""
        return await self.data.run(ops.begin_reembed(collection, job_id, embedding))

    async def abort_reembed(self, collection: str, job_id: str) -> int:
        """Let go of a re-embed that will not run (nothing to do, or it could not be queued): 1, 0
        (not this job's), or -1: its swap has begun and can only be finished."""
        return await self.data.run(ops.abort_reembed(collection, job_id))

    # -- export ---------------------------------------------------------------------------------
    async def shard_count(self, collection: str) -> int:
        return await self.data.run(ops.shard_count(collection))

    async def scan_vectors(
        self, collection: str, shard: int, cursor: int, count: int
    ) -> tuple[int, dict[bytes, bytes]]:
        return await self.data.run(ops.scan_vectors(collection, shard, cursor, count))

    async def vector_ids(self, collection: str) -> list[str]:
        return await self.data.run(ops.vector_ids(collection))

    async def vectors(self, collection: str, ids: list[str]) -> list[bytes | None]:
        return await self.data.run(ops.raw_vectors(collection, ids))

    async def filenames(self, collection: str, ids: list[str]) -> list[str]:
        return await self.data.run(ops.filenames(collection, ids))

    # -- clusters ---------------------------------------------------------------------------
    async def clustering(self, collection: str) -> dict[str, Any] | None:
        found = await self.data.run(ops.clustering(collection))
        return None if found is None else {**found.summary, "job_id": found.job_id, "stale": found.stale}

    async def cluster_page(
        self, collection: str, cluster: int, offset: int, limit: int
    ) -> tuple[int, list[ImageRecord]]:
        return await self.data.run(ops.cluster_page(collection, cluster, offset, limit))
