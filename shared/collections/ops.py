"""Every read and write of collection data in Redis, written once as sans-I/O operations (like
`shared.jobs.lifecycle`): the API runs them on its asyncio client, the workers on their sync
one (`shared.runner`). Blob work (renditions) stays with the stores that own the blob client.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.collections import scripts
from shared.collections.header import DIM, VERSION, CollectionHeader
from shared.runner import Batch, Call, Op, text
from shared.schemas import ImageRecord, JobStatus


def _one(call: Any) -> Batch:
    return Batch([call])


# -- the header ---------------------------------------------------------------------------------
def header(name: str) -> Op[CollectionHeader]:
    (raw,) = yield _one(Call("hgetall", (keys.collection(name),)))
    return CollectionHeader.parse(raw)


def listed(name: str) -> Op[tuple[CollectionHeader, int] | None]:
    """(header, image count) of a listed collection, or None."""
    member, raw, count = yield Batch(
        [
            Call("sismember", (keys.COLLECTIONS, name)),
            Call("hgetall", (keys.collection(name),)),
            Call("hlen", (keys.images(name),)),
        ]
    )
    return (CollectionHeader.parse(raw), int(count)) if member else None


def names() -> Op[list[str]]:
    (raw,) = yield _one(Call("smembers", (keys.COLLECTIONS,)))
    return sorted(text(n) or "" for n in raw)


def version(name: str) -> Op[int]:
    (raw,) = yield _one(Call("hget", (keys.collection(name), VERSION)))
    return int(raw or 0)


def create(name: str, shards: int, now: str) -> Op[tuple[bool, int]]:
    """(created, the shards it has): one that exists keeps what it has."""
    member, have = yield Batch(
        [Call("sismember", (keys.COLLECTIONS, name)), scripts.CREATE_COLLECTION.call(name, args=[name, shards, now])]
    )
    return (not member and int(have) == shards), int(have)


# -- images -------------------------------------------------------------------------------------
def records(collection: str, image_ids: Sequence[str]) -> Op[list[ImageRecord | None]]:
    if not image_ids:
        return []
    (raw,) = yield _one(Call("hmget", (keys.images(collection), list(image_ids))))
    return [ImageRecord.model_validate_json(r) if r else None for r in raw]


def raw_records(collection: str, image_ids: Sequence[str]) -> Op[list[bytes | None]]:
    if not image_ids:
        return []
    (raw,) = yield _one(Call("hmget", (keys.images(collection), list(image_ids))))
    return raw


def filenames(collection: str, image_ids: Sequence[str]) -> Op[list[str]]:
    found = yield from records(collection, image_ids)
    return [r.filename if r else "" for r in found]


def metadata_of(collection: str, image_ids: Sequence[str]) -> Op[list[Any]]:
    """Each image's user metadata (None when it has none or is gone): what filters read."""
    raw = yield from raw_records(collection, image_ids)
    return [json.loads(r).get("metadata") if r else None for r in raw]


def existing(collection: str, image_ids: Sequence[str]) -> Op[list[str]]:
    """The ids among `image_ids` the collection holds, in their order."""
    if not image_ids:
        return []
    there = yield Batch([Call("hexists", (keys.images(collection), i)) for i in image_ids])
    return [i for i, present in zip(image_ids, there, strict=True) if present]


def page(collection: str, offset: int, limit: int) -> Op[tuple[int, list[ImageRecord]]]:
    """Images in the order they were added."""
    total, ids = yield Batch(
        [Call("zcard", (keys.order(collection),)), Call("zrange", (keys.order(collection), offset, offset + limit - 1))]
    )
    found = yield from records(collection, ids)
    return total, [r for r in found if r]


def delete_image(collection: str, image_id: str, log_maxlen: int, tombstone_ttl_s: int) -> Op[ImageRecord | None]:
    """Delete now (the caller deletes its rendition): see `lua.DELETE_IMAGE` for why a tombstone is
    left also when the image is not stored yet."""
    (deleted,) = yield _one(
        scripts.DELETE_IMAGE.call(collection, image_id, args=[image_id, log_maxlen, tombstone_ttl_s])
    )
    return None if deleted == 0 else ImageRecord.model_validate_json(deleted)


# -- vectors ------------------------------------------------------------------------------------
def stored_vector(collection: str, image_id: str) -> Op[tuple[bytes | None, int | None]]:
    """(the image's vector bytes, the collection's dimension), read together."""
    raw, dim = yield Batch(
        [Call("hget", (keys.vectors(collection), image_id)), Call("hget", (keys.collection(collection), DIM))],
        transaction=True,
    )
    return raw, (int(dim) if dim else None)


def vector_ids(collection: str, ordered: bool = True) -> Op[list[str]]:
    """Ids with a vector, sorted, or (`ordered=False`, cheaper at a million) in Redis's order."""
    (raw,) = yield _one(Call("hkeys", (keys.vectors(collection),)))
    found = [text(k) or "" for k in raw]
    return sorted(found) if ordered else found


def raw_vectors(collection: str, image_ids: Sequence[str]) -> Op[list[bytes | None]]:
    if not image_ids:
        return []
    (raw,) = yield _one(Call("hmget", (keys.vectors(collection), list(image_ids))))
    return raw


def scan_vectors(collection: str, cursor: int, count: int) -> Op[tuple[int, dict[bytes, bytes]]]:
    (out,) = yield _one(Call("hscan", (keys.vectors(collection), cursor), {"count": count}))
    return out


# -- re-embedding -------------------------------------------------------------------------------
def begin_reembed(collection: str, job_id: str, embedding: str) -> Op[list[str] | str]:
    """Mark the collection as re-embedding for this job and return the ids to re-embed, or the id
    of a re-embed still running (see `lua.BEGIN_REEMBED`)."""
    final = [s.value for s in JobStatus if s.final]
    (out,) = yield _one(scripts.BEGIN_REEMBED.call(collection, args=[job_id, embedding, keys.job(""), *final]))
    if int(out[0]) == -1:
        return text(out[1]) or ""
    return sorted(text(i) or "" for i in out[1:])


def abort_reembed(collection: str, job_id: str) -> Op[bool]:
    """Let go of a re-embed that will not swap (nothing to do, could not be queued, or failed)."""
    (out,) = yield _one(scripts.ABORT_REEMBED.call(collection, args=[job_id]))
    return int(out) == 1


def unstaged_ids(collection: str) -> Op[list[str]]:
    """Images without a staged vector (added during the re-embed by another embedding)."""
    live, staged = yield Batch(
        [Call("hkeys", (keys.images(collection),)), Call("hkeys", (keys.staged_vectors(collection),))],
        transaction=True,
    )
    return sorted(text(i) or "" for i in set(live) - set(staged))


# -- the change log -----------------------------------------------------------------------------
def log_position(collection: str) -> Op[tuple[str, int]]:
    """(id of the log's last entry or '0-0', the collection's version), read atomically."""
    tail, version_ = yield Batch(
        [
            Call("xrevrange", (keys.log(collection),), {"count": 1}),
            Call("hget", (keys.collection(collection), VERSION)),
        ],
        transaction=True,
    )
    return (text(tail[0][0]) or "0-0" if tail else "0-0"), int(version_ or 0)


# -- clusters -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusteringSummary:
    summary: dict[str, Any]
    job_id: str | None
    stale: bool  # an add or delete since (each bumps the collection's version)


def clustering(collection: str) -> Op[ClusteringSummary | None]:
    (summary, version_, job_id), current = yield Batch(
        [
            Call("hmget", (keys.clustering(collection), "summary", "version", "job_id")),
            Call("hget", (keys.collection(collection), VERSION)),
        ]
    )
    if summary is None:
        return None
    return ClusteringSummary(json.loads(summary), text(job_id), int(version_ or 0) != int(current or 0))


def cluster_page(collection: str, cluster: int, offset: int, limit: int) -> Op[tuple[int, list[ImageRecord]]]:
    key = keys.cluster_members(collection, cluster)
    total, ids = yield Batch([Call("llen", (key,)), Call("lrange", (key, offset, offset + limit - 1))])
    found = yield from records(collection, ids)
    # Images deleted since the clustering are skipped (the clustering is stale then).
    return total, [r for r in found if r]


# -- writes of the workers ----------------------------------------------------------------------
@dataclass(frozen=True)
class Embedding:
    """Who made the vectors being written: the model name, its full identity (model@input size)
    and the dimension."""

    model: str
    id: str
    dim: int


@dataclass(frozen=True)
class AddItem:
    record: ImageRecord
    vector: bytes  # b"": the image was found in the collection; only confirm it


def add_images(
    collection: str,
    embedding: Embedding,
    job_seq: int,
    items: Sequence[AddItem],
    log_maxlen: int,
    staged_ttl_s: int,
    now: str,
    replicas: int = 0,
    replicas_timeout_ms: int = 1000,
) -> Op[tuple[str | None, list[int]]]:
    """(the collection's other model, if it holds one: nothing written; else None, and per image
    1 created, 0 already there, 2 deleted after the job was queued). See `lua.ADD_IMAGES`.
    `replicas`: the writes must have reached that many replicas (WAIT, on the same connection)
    within the timeout, else `ReplicationTimeout`: Redis replicates asynchronously, and an add
    reported before a replica has it is lost if the primary dies."""
    args: list[Any] = [embedding.model, embedding.id, embedding.dim, log_maxlen, job_seq, collection, now, staged_ttl_s]
    for item in items:
        args += [item.record.image_id, item.record.model_dump_json(), item.vector, b""]
    ids = [item.record.image_id for item in items]
    add = scripts.ADD_IMAGES.call(collection, ids, args=args)
    if not replicas:
        (out,) = yield _one(add)
        return _added(out)
    # WAIT and INFO on the add's own connection: WAIT counts the replicas that have this client's
    # writes; the offset says how far a replica must get to hold them.
    out, acked, info = yield Batch([add, Call("wait", (replicas, replicas_timeout_ms)), Call("info", ("replication",))])
    if int(acked) < replicas:
        detail = f"the add reached {acked} of {replicas} replicas within {replicas_timeout_ms} ms"
        raise ReplicationTimeout(detail, collection, int(info["master_repl_offset"]), _added(out))
    return _added(out)


def _added(out: list[Any]) -> tuple[str | None, list[int]]:
    if int(out[0]) == -2:
        return text(out[1]), []
    return None, [int(flag) for flag in out[1:]]


def replicas_at(info: dict[str, Any], offset: int) -> int:
    """How many replicas in an `INFO replication` reply hold the primary's stream up to `offset`."""
    return sum(
        1
        for key, value in info.items()
        if key.startswith("slave") and isinstance(value, dict) and int(value.get("offset", -1)) >= offset
    )


class ReplicationTimeout(RedisTimeoutError):
    """Writes not yet on enough replicas within the WAIT. The worker's store waits longer for the
    replicas to reach `offset` and then goes on with `result`; past its patience this propagates as
    a Redis outage (the task waits and runs again, and claims the images it stored, `own_adds`)."""

    def __init__(
        self, detail: str, collection: str, offset: int = 0, result: tuple[str | None, list[int]] = (None, [])
    ) -> None:
        super().__init__(f"{collection}: {detail}")
        self.offset, self.result = offset, result


def own_adds(
    collection: str, added: Sequence[ImageRecord], flags: Sequence[int]
) -> Op[tuple[list[int], list[ImageRecord | None]]]:
    """(flags, the stored record of each image found already there, else None). Images found
    stored by this very job and item (the stored record has the job's id and the item's file name)
    count as created: a chunk that runs again after its add but before its outcomes were recorded
    reports what one clean run would have."""
    found = [i for i, flag in enumerate(flags) if flag == 0]
    stored: list[ImageRecord | None] = [None] * len(flags)
    if not found:
        return list(flags), stored
    for i, record in zip(found, (yield from records(collection, [added[i].image_id for i in found])), strict=True):
        stored[i] = record
    out = list(flags)
    for i in found:
        record = stored[i]
        if record is not None and added[i].job_id is not None and record.job_id == added[i].job_id:
            out[i] = 1 if record.filename == added[i].filename else 0
    return out, stored


def stage_vectors(collection: str, job_id: str, pairs: Sequence[tuple[str, bytes]], ttl_s: int) -> Op[int]:
    """Stage new vectors for the collection's re-embed `job_id`; -1 if that is not its re-embed."""
    args: list[Any] = [ttl_s, job_id, *(x for pair in pairs for x in pair)]
    (out,) = yield _one(scripts.STAGE_VECTORS.call(collection, args=args))
    return int(out)


def swap_vectors(
    collection: str, job_id: str, embedding: Embedding, failed_ids: Sequence[str], log_maxlen: int
) -> Op[tuple[int, list[str]]]:
    """(code, ids dropped): see `lua.SWAP_VECTORS`."""
    args = [job_id, embedding.model, embedding.id, embedding.dim, log_maxlen, *failed_ids]
    (out,) = yield _one(scripts.SWAP_VECTORS.call(collection, args=args))
    return int(out[0]), [text(i) or "" for i in out[1:]]


def publish_snapshot(collection: str, part: str, fields: Sequence[Any]) -> Op[str | None]:
    """The blob key no longer named (to delete; '' for none), or None when ours was not newer.
    `fields`: blob key, version, last log id, model, dim, count (see `lua.PUBLISH_SNAPSHOT`)."""
    (out,) = yield _one(scripts.PUBLISH_SNAPSHOT.call(collection, part, args=list(fields)))
    return None if out is None else text(out)


def replace_records(collection: str, records: dict[str, str]) -> Op[None]:
    """Rewrite records of images still in the collection (a migration): see `lua.REPLACE_RECORDS`."""
    yield _one(scripts.REPLACE_RECORDS.call(collection, args=[x for pair in records.items() for x in pair]))


# -- more reads ---------------------------------------------------------------------------------
def exists(name: str) -> Op[bool]:
    (member,) = yield _one(Call("sismember", (keys.COLLECTIONS, name)))
    return bool(member)


def order_ids(collection: str, start: int, count: int) -> Op[list[bytes]]:
    """Ids in the order they were added, `count` from `start` (a scan's next block)."""
    (ids,) = yield _one(Call("zrange", (keys.order(collection), start, start + count - 1)))
    return ids


def legacy_renditions(collection: str, image_ids: Sequence[str]) -> Op[list[bytes | None]]:
    """Renditions of images indexed before renditions moved to the blob store (`worker.migrate`)."""
    if not image_ids:
        return []
    (raw,) = yield _one(Call("hmget", (keys.thumbnails(collection), list(image_ids))))
    return raw


def log_after(collection: str, last_id: str, count: int) -> Op[list[tuple[bytes, dict[bytes, bytes]]]]:
    (entries,) = yield _one(Call("xrange", (keys.log(collection),), {"min": f"({last_id}", "count": count}))
    return entries


def vector_count(collection: str) -> Op[int]:
    (n,) = yield _one(Call("hlen", (keys.vectors(collection),)))
    return int(n)


def snapshot_pointer(collection: str, part: str = "") -> Op[dict[str, str]]:
    """The newest published replica snapshot's fields (blob key, version, log id, model, dim, count)."""
    (raw,) = yield _one(Call("hgetall", (keys.snapshot(collection, part),)))
    return {text(k) or "": text(v) or "" for k, v in raw.items()}


# -- clusterings --------------------------------------------------------------------------------
def clustering_id(collection: str) -> Op[str | None]:
    (job_id,) = yield _one(Call("hget", (keys.clustering(collection), "job_id")))
    return text(job_id)


@dataclass(frozen=True)
class ClusteringState:
    job_id: str
    centroids: np.ndarray
    labels: dict[str, int]


def clustering_state(collection: str) -> Op[ClusteringState | None]:
    ((job_id, k, dim, centroids),) = yield _one(
        Call("hmget", (keys.clustering(collection), "job_id", "k", "dim", "centroids"))
    )
    if job_id is None:
        return None
    (labels,) = yield _one(Call("hgetall", (keys.labels(collection),)))
    matrix = np.frombuffer(centroids, dtype="<f4").reshape(int(k), int(dim))
    return ClusteringState(text(job_id) or "", matrix, {text(key) or "": int(v) for key, v in labels.items()})


def save_clustering(
    collection: str,
    fields: dict[str, Any],
    labels: dict[str, int],
    members: Sequence[Sequence[str]],
) -> Op[None]:
    """Replace the collection's clustering in one transaction: readers see the old or the new.
    `fields`: the clustering hash (job_id, k, version, created_at, summary, centroids, dim)."""
    (old_k,) = yield _one(Call("hget", (keys.clustering(collection), "k")))
    calls = [
        Call(
            "delete",
            (keys.labels(collection), *(keys.cluster_members(collection, c) for c in range(max(int(old_k or 0), 1)))),
        )
    ]
    items = list(labels.items())
    for start in range(0, len(items), 5000):
        calls.append(Call("hset", (keys.labels(collection),), {"mapping": dict(items[start : start + 5000])}))
    for cluster, ids in enumerate(members):
        for start in range(0, len(ids), 5000):
            calls.append(Call("rpush", (keys.cluster_members(collection, cluster), *ids[start : start + 5000])))
    calls.append(Call("hset", (keys.clustering(collection),), {"mapping": fields}))
    yield Batch(calls, transaction=True)


def scan_legacy_renditions(collection: str, cursor: int, count: int) -> Op[tuple[int, dict[bytes, bytes]]]:
    (out,) = yield _one(Call("hscan", (keys.thumbnails(collection), cursor), {"count": count}))
    return out


def drop_legacy_renditions(collection: str, image_ids: Sequence[str]) -> Op[None]:
    if image_ids:
        yield _one(Call("hdel", (keys.thumbnails(collection), *image_ids)))


def image_counts(names: Sequence[str]) -> Op[list[int]]:
    """Images per collection, in one round trip (metrics)."""
    if not names:
        return []
    counts = yield Batch([Call("hlen", (keys.images(name),)) for name in names])
    return [int(n) for n in counts]
