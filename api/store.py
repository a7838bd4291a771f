"""The API's reads and writes in Redis (asyncio client)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from api.turns import Turns
from shared import filters, keys, scripts, vectors
from shared.blobs_async import AsyncBlobStore
from shared.filters import Filter
from shared.jobs import AsyncJobs, JobLifecycle
from shared.jobs.scripts import SCRIPTS as JOB_SCRIPTS
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


def _s(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


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
        self._delete_image = client.register_script(scripts.DELETE_IMAGE)
        self._begin_reembed = client.register_script(scripts.BEGIN_REEMBED)
        self._abort_reembed = client.register_script(scripts.ABORT_REEMBED)
        self._create_collection = client.register_script(scripts.CREATE_COLLECTION)
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
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(*keys.job_keys(job_id))
        pipe.zrem(keys.WEBHOOKS_DUE, job_id)
        if owner:
            pipe.zrem(keys.owner_results(owner.decode()), job_id)
        await pipe.execute()

    async def get_job(self, job_id: str) -> JobView | None:
        return await self.jobs.get(job_id)

    # -- collections ------------------------------------------------------------------------
    async def collection_exists(self, name: str) -> bool:
        return bool(await self.redis.sismember(keys.COLLECTIONS, name))

    async def collections(self) -> list[CollectionInfo]:
        names = sorted(_s(n) for n in await self.redis.smembers(keys.COLLECTIONS))
        return [info for name in names if (info := await self.collection(name)) is not None]

    async def collection(self, name: str) -> CollectionInfo | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.sismember(keys.COLLECTIONS, name)
        pipe.hgetall(keys.collection(name))
        pipe.hlen(keys.images(name))
        member, raw, count = await pipe.execute()
        if not member:
            return None
        fields = {_s(k): _s(v) for k, v in raw.items()}
        shards = int(fields.get("shards") or 1)
        counts = [int(fields.get(f"count:{i}") or 0) for i in range(shards)] if shards > 1 else [int(count)]
        return CollectionInfo(
            name=name,
            image_count=int(count),
            model=fields.get("model"),
            dimension=int(fields["dim"]) if fields.get("dim") else None,
            created_at=fields.get("created_at"),
            shards=shards,
            shard_counts=counts,
        )

    async def put_query(self, job_id: str, collection: str, image_id: str) -> bool:
        """Store a stored image's vector as a fanned-out search's query (float32, as the worker
        would): the shards then need no dispatching worker. False if the image is gone."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(keys.vectors(collection), image_id)
        pipe.hget(keys.collection(collection), "dim")
        raw, dim = await pipe.execute()
        if not raw or not dim:
            return False
        query = vectors.decode(raw, int(dim)).astype("<f4").tobytes()
        await self.redis.set(keys.job_query(job_id), query, ex=self.job_ttl_s)
        return True

    async def create_collection(self, name: str, shards: int) -> tuple[bool, int]:
        """Create an empty collection with `shards` shards: (created, the shards it has)."""
        existed = await self.collection_exists(name)
        have = await self._create_collection(
            keys=[keys.COLLECTIONS, keys.collection(name)], args=[name, shards, utcnow()]
        )
        return (not existed and int(have) == shards), int(have)

    async def image(self, collection: str, image_id: str) -> ImageRecord | None:
        raw = await self.redis.hget(keys.images(collection), image_id)
        return ImageRecord.model_validate_json(raw) if raw else None

    async def rendition(self, collection: str, image_id: str) -> bytes | None:
        record = await self.image(collection, image_id)
        if record is None:
            return None
        key = rendition_key(collection, record)
        if key is None:  # indexed before renditions moved to the blob store
            return await self.redis.hget(keys.thumbnails(collection), image_id)
        return await self.blobs.get(key)

    async def image_page(self, collection: str, offset: int, limit: int) -> tuple[int, list[ImageRecord]]:
        """Images in the order they were added."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.order(collection))
        pipe.zrange(keys.order(collection), offset, offset + limit - 1)
        total, ids = await pipe.execute()
        if not ids:
            return total, []
        raw = await self.redis.hmget(keys.images(collection), ids)
        return total, [ImageRecord.model_validate_json(r) for r in raw if r]

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
            ids = await self.redis.zrange(keys.order(collection), start, start + batch - 1)
            if not ids:
                return total, page
            start += len(ids)
            raw = await self.redis.hmget(keys.images(collection), ids)
            passed = await anyio.to_thread.run_sync(_passing, node, raw)
            wanted = passed[max(0, offset - total) : max(0, offset + limit - total)]
            page.extend(ImageRecord.model_validate_json(r) for r in wanted)
            total += len(passed)

    async def existing(self, collection: str, image_ids: list[str]) -> list[str]:
        if not image_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for image_id in image_ids:
            pipe.hexists(keys.images(collection), image_id)
        return [i for i, there in zip(image_ids, await pipe.execute(), strict=True) if there]

    async def image_exists(self, collection: str, image_id: str) -> bool:
        return bool(await self.redis.hexists(keys.images(collection), image_id))

    async def delete_image(self, collection: str, image_id: str) -> bool:
        """Delete now; index jobs created before this call will not bring the image back, also
        when the image is not stored yet because its job is still queued (then False: 404)."""
        deleted = await self._delete_image(
            keys=keys.delete_image_keys(collection, image_id),
            args=[image_id, self.log_maxlen, self.tombstone_ttl_s],
        )
        if deleted == 0:
            return False
        key = rendition_key(collection, ImageRecord.model_validate_json(deleted))
        if key is not None:
            await self.blobs.delete([key])
        return True

    async def begin_reembed(self, collection: str, job_id: str, embedding: str) -> list[str] | str:
        """Mark the collection as re-embedding for this job and return the ids to re-embed, or the
        id of a re-embed still running. One script: two concurrent requests cannot both start, and
        an image added before the mark is in the list while one added after it is seen by the
        job's swap."""
        final = [s.value for s in JobStatus if s.final]
        out = await self._begin_reembed(
            keys=[keys.collection(collection), keys.images(collection), keys.staged_vectors(collection)],
            args=[job_id, embedding, keys.job(""), *final],
        )
        if int(out[0]) == -1:
            return _s(out[1])
        return sorted(_s(i) for i in out[1:])

    async def abort_reembed(self, collection: str, job_id: str) -> None:
        """Let go of a re-embed that will not run (nothing to do, or it could not be queued)."""
        await self._abort_reembed(keys=[keys.collection(collection), keys.staged_vectors(collection)], args=[job_id])

    # -- export ---------------------------------------------------------------------------------
    async def scan_vectors(self, collection: str, cursor: int, count: int) -> tuple[int, dict[bytes, bytes]]:
        return await self.redis.hscan(keys.vectors(collection), cursor, count=count)

    async def vector_ids(self, collection: str) -> list[str]:
        return sorted(_s(k) for k in await self.redis.hkeys(keys.vectors(collection)))

    async def vectors(self, collection: str, ids: list[str]) -> list[bytes | None]:
        return await self.redis.hmget(keys.vectors(collection), ids) if ids else []

    async def filenames(self, collection: str, ids: list[str]) -> list[str]:
        if not ids:
            return []
        raw = await self.redis.hmget(keys.images(collection), ids)
        return [ImageRecord.model_validate_json(r).filename if r else "" for r in raw]

    # -- clusters ---------------------------------------------------------------------------
    async def clustering(self, collection: str) -> dict[str, Any] | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.clustering(collection), "summary", "version", "job_id")
        pipe.hget(keys.collection(collection), "version")
        (summary, version, job_id), current = await pipe.execute()
        if summary is None:
            return None
        # Any add or delete since the clustering bumps the collection's version.
        return {**json.loads(summary), "job_id": _s(job_id), "stale": int(version or 0) != int(current or 0)}

    async def cluster_page(
        self, collection: str, cluster: int, offset: int, limit: int
    ) -> tuple[int, list[ImageRecord]]:
        key = keys.cluster_members(collection, cluster)
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(key)
        pipe.lrange(key, offset, offset + limit - 1)
        total, ids = await pipe.execute()
        if not ids:
            return total, []
        raw = await self.redis.hmget(keys.images(collection), ids)
        # Images deleted since the clustering are skipped (the clustering is stale then).
        return total, [ImageRecord.model_validate_json(r) for r in raw if r]
