"""Every read and write of collection data in Redis, written once as sans-I/O operations (like
`shared.jobs.lifecycle`): the API runs them on its asyncio client, the workers on their sync
one (`shared.runner`). Blob work (renditions) stays with the stores that own the blob client.

A collection's data lives in its shards' keys (`shared.keys`: one Redis Cluster slot per shard);
an operation on image ids reads the collection's shard count, then each shard it needs, in one
round trip. Whole-collection reads (counts, versions, ids) visit every shard.
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
from shared.collections.header import DIM, MODEL, SHARDS, VERSION, CollectionHeader, ShardHeader
from shared.runner import Batch, Call, Op, text
from shared.schemas import ImageRecord, JobStatus
from shared.shards import shard_of


def _one(call: Any) -> Batch:
    return Batch([call])


def shard_count(name: str) -> Op[int]:
    """The collection's shards (fixed when it is created; 1 for one that does not exist)."""
    (raw,) = yield _one(Call("hget", (keys.collection(name), SHARDS)))
    return int(raw or 1)


def _grouped(image_ids: Sequence[str], shards: int) -> dict[int, list[int]]:
    """shard -> positions in `image_ids` of the ids it holds."""
    out: dict[int, list[int]] = {}
    for i, image_id in enumerate(image_ids):
        out.setdefault(shard_of(image_id, shards), []).append(i)
    return out


def _hmget(key_of: Any, image_ids: Sequence[str], shards: int) -> Op[list[Any]]:
    """HMGET of each id in its shard's hash (`key_of(shard)`), in the ids' order."""
    groups = _grouped(image_ids, shards)
    replies = yield Batch([Call("hmget", (key_of(s), [image_ids[i] for i in pos])) for s, pos in groups.items()])
    out: list[Any] = [None] * len(image_ids)
    for pos, values in zip(groups.values(), replies, strict=True):
        for i, value in zip(pos, values, strict=True):
            out[i] = value
    return out


# -- the header ---------------------------------------------------------------------------------
def _with_shards(name: str, raw: dict) -> Op[CollectionHeader]:
    shards = int(text(raw.get(SHARDS.encode(), raw.get(SHARDS))) or 1) if raw else 1
    calls: list[Call] = []
    for s in range(shards):
        calls += [Call("hget", (keys.shard(name, s), VERSION)), Call("hlen", (keys.images(name, s),))]
    replies = yield Batch(calls)
    versions = tuple(int(v or 0) for v in replies[0::2])
    counts = tuple(int(n) for n in replies[1::2])
    return CollectionHeader.parse(raw, versions, counts)


def header(name: str) -> Op[CollectionHeader]:
    """The collection's header, with its shards' versions and counts."""
    (raw,) = yield _one(Call("hgetall", (keys.collection(name),)))
    return (yield from _with_shards(name, raw))


def model(name: str) -> Op[str | None]:
    """The collection's model (one read: what a search checks, without the shards' counts)."""
    (raw,) = yield _one(Call("hget", (keys.collection(name), MODEL)))
    return text(raw)


def shard_header(name: str, shard: int) -> Op[ShardHeader]:
    (raw,) = yield _one(Call("hgetall", (keys.shard(name, shard),)))
    return ShardHeader.parse(raw)


def listed(name: str) -> Op[tuple[CollectionHeader, int] | None]:
    """(header, image count) of a listed collection, or None."""
    member, raw = yield Batch([Call("sismember", (keys.COLLECTIONS, name)), Call("hgetall", (keys.collection(name),))])
    if not member:
        return None
    found = yield from _with_shards(name, raw)
    return found, found.count


def names() -> Op[list[str]]:
    (raw,) = yield _one(Call("smembers", (keys.COLLECTIONS,)))
    return sorted(text(n) or "" for n in raw)


def version(name: str) -> Op[int]:
    """The collection's version: the sum of its shards' (each add, delete and reset moves one)."""
    found = yield from header(name)
    return found.version


def create(name: str, shards: int, now: str) -> Op[tuple[bool, int]]:
    """(created, the shards it has): one that exists keeps what it has."""
    (out,) = yield _one(scripts.CREATE_COLLECTION.call(name, args=[name, shards, now]))
    yield _one(Call("sadd", (keys.COLLECTIONS, name)))  # after the header: a rerun lists it
    return int(out[0]) == 1, int(out[1])


# -- images -------------------------------------------------------------------------------------
def raw_records(collection: str, image_ids: Sequence[str], shards: int | None = None) -> Op[list[bytes | None]]:
    """`shards`: the collection's shard count where the caller knows it (saves reading it)."""
    if not image_ids:
        return []
    if shards is None:
        shards = yield from shard_count(collection)
    return (yield from _hmget(lambda s: keys.images(collection, s), image_ids, shards))


def records(collection: str, image_ids: Sequence[str], shards: int | None = None) -> Op[list[ImageRecord | None]]:
    raw = yield from raw_records(collection, image_ids, shards)
    return [ImageRecord.model_validate_json(r) if r else None for r in raw]


def filenames(collection: str, image_ids: Sequence[str], shards: int | None = None) -> Op[list[str]]:
    found = yield from records(collection, image_ids, shards)
    return [r.filename if r else "" for r in found]


def metadata_of(collection: str, image_ids: Sequence[str]) -> Op[list[Any]]:
    """Each image's user metadata (None when it has none or is gone): what filters read."""
    raw = yield from raw_records(collection, image_ids)
    return [json.loads(r).get("metadata") if r else None for r in raw]


def existing(collection: str, image_ids: Sequence[str], shards: int | None = None) -> Op[list[str]]:
    """The ids among `image_ids` the collection holds, in their order (`shards`: if known)."""
    if not image_ids:
        return []
    if shards is None:
        shards = yield from shard_count(collection)
    there = yield Batch([Call("hexists", (keys.images(collection, shard_of(i, shards)), i)) for i in image_ids])
    return [i for i, present in zip(image_ids, there, strict=True) if present]


def _spans(counts: Sequence[int], offset: int, limit: int) -> list[tuple[int, int, int]]:
    """(shard, start, stop) ranges of the shards' order sets laid end to end, shard 0 first, that
    cover [offset, offset + limit)."""
    out, base = [], 0
    for s, n in enumerate(counts):
        start, stop = max(offset - base, 0), min(offset + limit - base, n)
        if start < stop:
            out.append((s, start, stop - 1))
        base += n
    return out


def order_ids(collection: str, start: int, count: int) -> Op[list[bytes]]:
    """Ids in the order they were added (shard by shard), `count` from `start` (a page, or a scan's
    next block)."""
    shards = yield from shard_count(collection)
    counts = yield Batch([Call("zcard", (keys.order(collection, s),)) for s in range(shards)])
    spans = _spans([int(n) for n in counts], start, count)
    if not spans:
        return []
    parts = yield Batch([Call("zrange", (keys.order(collection, s), a, b)) for s, a, b in spans])
    return [i for part in parts for i in part]


def page(collection: str, offset: int, limit: int) -> Op[tuple[int, list[ImageRecord]]]:
    """Images in the order they were added (each shard's in turn)."""
    shards = yield from shard_count(collection)
    counts = yield Batch([Call("zcard", (keys.order(collection, s),)) for s in range(shards)])
    spans = _spans([int(n) for n in counts], offset, limit)
    parts = (yield Batch([Call("zrange", (keys.order(collection, s), a, b)) for s, a, b in spans])) if spans else []
    ids = [text(i) or "" for part in parts for i in part]
    found = yield from records(collection, ids)
    return sum(int(n) for n in counts), [r for r in found if r]


def delete_image(collection: str, image_id: str, log_maxlen: int, tombstone_ttl_s: int) -> Op[ImageRecord | None]:
    """Delete now (the caller deletes its rendition): see `lua.DELETE_IMAGE` for why a tombstone is
    left also when the image is not stored yet. A collection that does not exist gets none (no key
    per probe of random ids). The sequence number is drawn first: a delete wins over every add of a
    job created before it, in whichever shard."""
    shards, exists = yield Batch(
        [Call("hget", (keys.collection(collection), SHARDS)), Call("exists", (keys.collection(collection),))]
    )
    if not exists:
        return None
    shard = shard_of(image_id, int(shards or 1))
    (seq,) = yield _one(Call("incr", (keys.SEQUENCE,)))
    args = [image_id, log_maxlen, tombstone_ttl_s, seq]
    (deleted,) = yield _one(scripts.DELETE_IMAGE.call(collection, shard, image_id, args=args))
    if deleted == 0:
        return None
    yield _one(Call("hdel", (keys.labels(collection), image_id)))  # its clustering label (stale now)
    return ImageRecord.model_validate_json(deleted)


# -- vectors ------------------------------------------------------------------------------------
def stored_vector(collection: str, image_id: str, shards: int | None = None) -> Op[tuple[bytes | None, int | None]]:
    """(the image's vector bytes, their dimension), read together from its shard."""
    if shards is None:
        shards = yield from shard_count(collection)
    shard = shard_of(image_id, shards)
    raw, dim = yield Batch(
        [
            Call("hget", (keys.vectors(collection, shard), image_id)),
            Call("hget", (keys.shard(collection, shard), DIM)),
        ],
        transaction=True,
    )
    return raw, (int(dim) if dim else None)


def vector_ids(collection: str, ordered: bool = True, shard: int | None = None) -> Op[list[str]]:
    """Ids with a vector (of one shard, or all), sorted, or (`ordered=False`, cheaper at a
    million) in Redis's order."""
    shards = [shard] if shard is not None else range((yield from shard_count(collection)))
    parts = yield Batch([Call("hkeys", (keys.vectors(collection, s),)) for s in shards])
    found = [text(k) or "" for part in parts for k in part]
    return sorted(found) if ordered else found


def raw_vectors(collection: str, image_ids: Sequence[str], shard: int | None = None) -> Op[list[bytes | None]]:
    """Vectors by id; `shard`: they are all that shard's (a replica's own reads)."""
    if not image_ids:
        return []
    if shard is not None:
        (raw,) = yield _one(Call("hmget", (keys.vectors(collection, shard), list(image_ids))))
        return raw
    shards = yield from shard_count(collection)
    return (yield from _hmget(lambda s: keys.vectors(collection, s), image_ids, shards))


def scan_vectors(collection: str, shard: int, cursor: int, count: int) -> Op[tuple[int, dict[bytes, bytes]]]:
    (out,) = yield _one(Call("hscan", (keys.vectors(collection, shard), cursor), {"count": count}))
    return out


# -- re-embedding -------------------------------------------------------------------------------
def begin_reembed(collection: str, job_id: str, embedding: str) -> Op[list[str] | str]:
    """Mark the collection (then each shard) as re-embedding for this job and return the ids to
    re-embed, or the id of a re-embed still running (see `lua.BEGIN_REEMBED`)."""
    ((running, shards),) = yield _one(Call("hmget", (keys.collection(collection), "reembed_job", SHARDS)))
    ended = ""
    if running is not None:
        (status,) = yield _one(Call("hget", (keys.job(text(running) or ""), "status")))
        if status is not None and not JobStatus(text(status)).final:
            return text(running) or ""
        ended = text(running) or ""
    (out,) = yield _one(scripts.BEGIN_REEMBED.call(collection, args=[job_id, embedding, ended]))
    if int(out[0]) == -1:
        return text(out[1]) or ""
    parts = yield Batch(
        [scripts.BEGIN_SHARD_REEMBED.call(collection, s, args=[job_id, embedding]) for s in range(int(shards or 1))]
    )
    return sorted(text(i) or "" for part in parts for i in part)


def abort_reembed(collection: str, job_id: str) -> Op[int]:
    """Let go of a re-embed that will not swap (nothing to do, could not be queued, or failed):
    the header first, then the shards. 1 released, 0 not this job's, -1 refused: its swap has begun
    and can only be finished (`lua.ABORT_REEMBED`)."""
    (out,) = yield _one(scripts.ABORT_REEMBED.call(collection, args=[job_id]))
    if int(out) == -1:
        return -1
    shards = yield from shard_count(collection)
    yield Batch([scripts.ABORT_SHARD_REEMBED.call(collection, s, args=[job_id]) for s in range(shards)])
    return int(out)


def unstaged_ids(collection: str, job_id: str) -> Op[list[str]]:
    """Images without a staged vector (added during the re-embed by another embedding), in the
    shards still marked for this re-embed (one that swapped has nothing staged any more)."""
    shards = yield from shard_count(collection)
    out: set[bytes] = set()
    for s in range(shards):
        marked, live, staged = yield Batch(
            [
                Call("hget", (keys.shard(collection, s), "reembed_job")),
                Call("hkeys", (keys.images(collection, s),)),
                Call("hkeys", (keys.staged_vectors(collection, s),)),
            ],
            transaction=True,
        )
        if text(marked) == job_id:
            out |= set(live) - set(staged)
    return sorted(text(i) or "" for i in out)


# -- a shard's change log -----------------------------------------------------------------------
def log_position(collection: str, shard: int) -> Op[tuple[str, int]]:
    """(id of the shard log's last entry or '0-0', the shard's version), read atomically."""
    tail, version_ = yield Batch(
        [
            Call("xrevrange", (keys.log(collection, shard),), {"count": 1}),
            Call("hget", (keys.shard(collection, shard), VERSION)),
        ],
        transaction=True,
    )
    return (text(tail[0][0]) or "0-0" if tail else "0-0"), int(version_ or 0)


def shard_position(name: str, shard: int) -> Op[tuple[ShardHeader, str]]:
    """(the shard's header, id of its log's last entry or '0-0'), read atomically: a replica at that
    version and entry is current without reading the log."""
    raw, tail = yield Batch(
        [Call("hgetall", (keys.shard(name, shard),)), Call("xrevrange", (keys.log(name, shard),), {"count": 1})],
        transaction=True,
    )
    return ShardHeader.parse(raw), (text(tail[0][0]) or "0-0" if tail else "0-0")


def log_after(collection: str, shard: int, last_id: str, count: int) -> Op[list[tuple[bytes, dict[bytes, bytes]]]]:
    (entries,) = yield _one(Call("xrange", (keys.log(collection, shard),), {"min": f"({last_id}", "count": count}))
    return entries


def vector_count(collection: str, shard: int) -> Op[int]:
    (n,) = yield _one(Call("hlen", (keys.vectors(collection, shard),)))
    return int(n)


def snapshot_pointer(collection: str, shard: int) -> Op[dict[str, str]]:
    """The shard's newest published replica snapshot (blob key, version, log id, model, dim, count)."""
    (raw,) = yield _one(Call("hgetall", (keys.snapshot(collection, shard),)))
    return {text(k) or "": text(v) or "" for k, v in raw.items()}


def publish_snapshot(collection: str, shard: int, fields: Sequence[Any]) -> Op[str | None]:
    """The blob key no longer named (to delete; '' for none), or None when ours was not newer.
    `fields`: blob key, version, last log id, model, dim, count (see `lua.PUBLISH_SNAPSHOT`)."""
    (out,) = yield _one(scripts.PUBLISH_SNAPSHOT.call(collection, shard, args=list(fields)))
    return None if out is None else text(out)


# -- clusters -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusteringSummary:
    summary: dict[str, Any]
    job_id: str | None
    stale: bool  # an add or delete since (each moves the collection's version)


def clustering(collection: str) -> Op[ClusteringSummary | None]:
    ((summary, version_, job_id),) = yield _one(
        Call("hmget", (keys.clustering(collection), "summary", "version", "job_id"))
    )
    if summary is None:
        return None
    current = yield from version(collection)
    return ClusteringSummary(json.loads(summary), text(job_id), int(version_ or 0) != current)


def cluster_page(collection: str, cluster: int, offset: int, limit: int) -> Op[tuple[int, list[ImageRecord]]]:
    key = keys.cluster_members(collection, cluster)
    total, ids = yield Batch([Call("llen", (key,)), Call("lrange", (key, offset, offset + limit - 1))])
    found = yield from records(collection, [text(i) or "" for i in ids])
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


def claim_model(collection: str, embedding: Embedding, now: str) -> Op[str | None]:
    """Before an add writes to any shard: the collection's other model, if it holds images of one
    (nothing may be written), else None (ours is its model now). See `lua.CLAIM_MODEL`."""
    (raw,) = yield _one(Call("hgetall", (keys.collection(collection),)))
    if CollectionHeader.parse(raw).model == embedding.model and raw.get(b"embedding"):
        return None  # the common case: one read, no write
    found = yield from _with_shards(collection, raw)
    empty = "1" if found.count == 0 else "0"
    args = [embedding.model, embedding.id, embedding.dim, collection, now, empty]
    (out,) = yield _one(scripts.CLAIM_MODEL.call(collection, args=args))
    return text(out[1]) if int(out[0]) == -2 else None


def list_collection(collection: str) -> Op[None]:
    """A collection exists (is listed) from its first image: after the shard writes, so that a
    rerun of the chunk lists it if this step was lost."""
    yield _one(Call("sadd", (keys.COLLECTIONS, collection)))


def add_images(
    collection: str,
    shard: int,
    embedding: Embedding,
    job_seq: int,
    items: Sequence[AddItem],
    log_maxlen: int,
    staged_ttl_s: int,
    replicas: int = 0,
    replicas_timeout_ms: int = 1000,
) -> Op[tuple[str | None, list[int]]]:
    """Add to one shard, atomically: (the shard's other model, if it holds one: nothing written;
    else None, and per image 1 created, 0 already there, 2 deleted after the job was queued). See
    `lua.ADD_IMAGES`. `replicas`: the writes must have reached that many replicas (WAIT, on the
    same connection) within the timeout, else `ReplicationTimeout`: Redis replicates
    asynchronously, and an add reported before a replica has it is lost if the primary dies."""
    args: list[Any] = [embedding.model, embedding.id, embedding.dim, log_maxlen, job_seq, staged_ttl_s]
    for item in items:
        args += [item.record.image_id, item.record.model_dump_json(), item.vector, b""]
    ids = [item.record.image_id for item in items]
    add = scripts.ADD_IMAGES.call(collection, shard, ids, args=args)
    if not replicas:
        (out,) = yield _one(add)
        return _added(out)
    # WAIT and INFO on the add's own connection (`pin`: the node serving the shard, in a Redis
    # Cluster): WAIT counts the replicas that have this client's writes; the offset says how far
    # a replica must get to hold them.
    pin = keys.shard(collection, shard)
    calls = [add, Call("wait", (replicas, replicas_timeout_ms)), Call("info", ("replication",))]
    out, acked, info = yield Batch(calls, pin=pin)
    if int(acked) < replicas:
        detail = f"the add reached {acked} of {replicas} replicas within {replicas_timeout_ms} ms"
        offset, replid = int(info["master_repl_offset"]), text(info.get("master_replid"))
        raise ReplicationTimeout(detail, collection, pin, offset, _added(out), replid)
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
    replicas of the node serving `key` to reach `offset` and then goes on with `result`; past its
    patience this propagates as a Redis outage (the task waits and runs again, and claims the
    images it stored, `own_adds`)."""

    def __init__(
        self,
        detail: str,
        collection: str,
        key: str = "",
        offset: int = 0,
        result: tuple[str | None, list[int]] = (None, []),
        replid: str | None = None,
    ) -> None:
        super().__init__(f"{collection}: {detail}")
        self.key, self.offset, self.result = key, offset, result
        # The primary's replication id: an offset means something only within that one history.
        self.replid = replid


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
    """Stage new vectors for the collection's re-embed `job_id` (each in its shard); -1 if that is
    not its re-embed."""
    if not pairs:
        return 0
    shards = yield from shard_count(collection)
    groups = _grouped([image_id for image_id, _ in pairs], shards)
    calls = [
        scripts.STAGE_VECTORS.call(collection, s, args=[ttl_s, job_id, *(x for i in pos for x in pairs[i])])
        for s, pos in groups.items()
    ]
    out = [int(n) for n in (yield Batch(calls))]
    return -1 if -1 in out else sum(out)


def swap_vectors(
    collection: str, job_id: str, embedding: Embedding, failed_ids: Sequence[str], log_maxlen: int
) -> Op[tuple[int, list[str]]]:
    """(code, ids dropped), see `lua.SWAP_VECTORS`: 1 swapped, 2 swapped before, 0 not yet, -1 not
    this job's re-embed. Shards cannot swap together: each drops its failed ids and says whether
    it is ready; only when all are does each swap, then the header takes the new model. A shard
    that took an unstaged image between the two steps stays behind (0): the finisher stages it and
    calls again, and the shards that swapped answer 2."""
    shards = yield from shard_count(collection)
    groups = _grouped(failed_ids, shards)
    head = [job_id, embedding.model, embedding.id, embedding.dim, log_maxlen]

    def each(swap: str, drop: bool) -> list[Any]:
        return [
            scripts.SWAP_VECTORS.call(
                collection, s, args=[*head, swap, *([failed_ids[i] for i in groups.get(s, [])] if drop else [])]
            )
            for s in range(shards)
        ]

    ready = yield Batch(each("0", True))
    dropped = [text(i) or "" for out in ready for i in out[1:]]
    codes = [int(out[0]) for out in ready]
    if -1 in codes:
        return -1, dropped
    if 0 in codes:
        return 0, dropped
    (begun,) = yield _one(scripts.BEGIN_SWAP.call(collection, args=[job_id]))
    if int(begun) == -1 and 2 not in codes:  # aborted or superseded before any shard swapped
        return -1, dropped
    codes = []
    for call in each("1", False):  # one shard at a time: a worker may die between any two
        (out,) = yield _one(call)
        codes.append(int(out[0]))
    if -1 in codes:
        return -1, dropped
    if 0 in codes:
        return 0, dropped
    args = [job_id, embedding.model, embedding.id, embedding.dim]
    (out,) = yield _one(scripts.FINISH_REEMBED.call(collection, args=args))
    return int(out), dropped


def replace_records(collection: str, records: dict[str, str]) -> Op[None]:
    """Rewrite records of images still in the collection (a migration): see `lua.REPLACE_RECORDS`."""
    shards = yield from shard_count(collection)
    ids = list(records)
    groups = _grouped(ids, shards)
    calls = [
        scripts.REPLACE_RECORDS.call(collection, s, args=[x for i in pos for x in (ids[i], records[ids[i]])])
        for s, pos in groups.items()
    ]
    if calls:
        yield Batch(calls)


# -- more reads ---------------------------------------------------------------------------------
def exists(name: str) -> Op[bool]:
    (member,) = yield _one(Call("sismember", (keys.COLLECTIONS, name)))
    return bool(member)


def legacy_renditions(collection: str, image_ids: Sequence[str]) -> Op[list[bytes | None]]:
    """Renditions of images indexed before renditions moved to the blob store (`worker.migrate`)."""
    if not image_ids:
        return []
    shards = yield from shard_count(collection)
    return (yield from _hmget(lambda s: keys.thumbnails(collection, s), image_ids, shards))


def scan_legacy_renditions(collection: str, shard: int, cursor: int, count: int) -> Op[tuple[int, dict[bytes, bytes]]]:
    (out,) = yield _one(Call("hscan", (keys.thumbnails(collection, shard), cursor), {"count": count}))
    return out


def drop_legacy_renditions(collection: str, shard: int, image_ids: Sequence[str]) -> Op[None]:
    if image_ids:
        yield _one(Call("hdel", (keys.thumbnails(collection, shard), *image_ids)))


def image_counts(names: Sequence[str]) -> Op[list[int]]:
    """Images per collection (metrics): the shard counts first, then every shard's size."""
    if not names:
        return []
    shards = [int(n or 1) for n in (yield Batch([Call("hget", (keys.collection(n), SHARDS)) for n in names]))]
    calls = [Call("hlen", (keys.images(n, s),)) for n, k in zip(names, shards, strict=True) for s in range(k)]
    sizes = [int(n) for n in (yield Batch(calls))]
    out, at = [], 0
    for k in shards:
        out.append(sum(sizes[at : at + k]))
        at += k
    return out


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
    """Replace the collection's clustering in one transaction (its keys share the header's slot):
    readers see the old or the new. `fields`: the clustering hash (job_id, k, version,
    created_at, summary, centroids, dim)."""
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
