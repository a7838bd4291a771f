"""Moves data written before keys were hash-tagged per shard (issue 23) into the per-shard layout:
collections (`ss:c:<name>:*` -> the header `ss:c:{<name>}` and shards `ss:c:{<name>:<i>}:*`), jobs
(`ss:job:<id>*` -> `ss:job:{<id>}*`) and the per-key quota sets (`ss:owner:<o>:*`).

Run once, with the service stopped, on the standalone Redis the old version used (a Redis Cluster
never held the old layout: its scripts spanned slots): `python -m worker.migrate`. Until then the
new version does not see those collections (their images read as absent). Idempotent and
resumable: every step either finds its source gone (moved already) or copies what is idempotent to
copy, and a collection's new header is written last, after its data, so an interrupted run is
simply run again.

An unsharded collection's keys are renamed (O(1) each): its log and version carry over, and its
replicas and snapshots stay valid. A sharded one is copied into its shards; its shards start new
logs (replicas rebuild once). A collection in the middle of a re-embed is left for later (finish or
cancel the job first; a marker of a job that ended or expired is dropped). A collection the new
version wrote to already (a PUT, an add) is merged into, never renamed over. The old snapshots of a
sharded collection stay in the blob store unnamed (delete `snapshots/<name>/` if space matters).
"""

from __future__ import annotations

import logging

import redis

from shared import keys
from shared.collections.header import SHARDS, VERSION
from shared.schemas import JobStatus
from shared.shards import shard_of

log = logging.getLogger(__name__)

_DATA = ("images", "order", "vectors", "vectors:next", "thumbs", "log")
_WHOLE = {"clustering": keys.clustering, "labels": keys.labels}
_HEADER_FIELDS = ("name", "created_at", "model", "embedding", "dim", "last_reembed_job")
_SHARD_FIELDS = ("model", "embedding", "dim")
BATCH = 1000


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _rename(client: redis.Redis, old: str, new: str) -> bool:
    """Move `old` to `new` unless it moved already (False when there was nothing to move)."""
    try:
        client.rename(old, new)
        return True
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return False
        raise


def legacy_collections(client: redis.Redis) -> list[str]:
    """Listed collections with data still in the old layout."""
    names = sorted(_s(n) for n in client.smembers(keys.COLLECTIONS))
    return [n for n in names if client.exists(keys.legacy(n))]


def _running(client: redis.Redis, job_id: str) -> bool:
    """Whether the job exists, unfinished (its record in either layout)."""
    status = client.hget(keys.job(job_id), "status") or client.hget(f"ss:job:{job_id}", "status")
    return status is not None and not JobStatus(_s(status)).final


def migrate_collection(client: redis.Redis, name: str) -> str:
    """Move one collection; returns what was done."""
    raw = {_s(k): _s(v) for k, v in client.hgetall(keys.legacy(name)).items()}
    if not raw:
        return "already in the per-shard layout" if client.exists(keys.collection(name)) else "nothing to move"
    if raw.get("reembed_job") and _running(client, raw["reembed_job"]):
        return (
            f"skipped: re-embed job {raw['reembed_job']} is running (let it finish or cancel it, then run this again)"
        )
    client.delete(keys.legacy(name, "vectors:next"))  # an ended re-embed's leftovers
    # The new version may have written to the collection already (a PUT, an add): then its keys are
    # merged into, never renamed over.
    new = {_s(k): _s(v) for k, v in client.hgetall(keys.collection(name)).items()}
    shards = int(new.get(SHARDS) or raw.get(SHARDS) or 1)
    for what, key_of in _WHOLE.items():
        _rename(client, keys.legacy(name, what), key_of(name))
    for cursor_key in client.scan_iter(match=keys.legacy(name, "cluster:*"), count=BATCH):
        _rename(client, _s(cursor_key), keys.cluster_members(name, int(_s(cursor_key).rsplit(":", 1)[1])))
    if shards == 1 and not new:
        _move_unsharded(client, name, raw)
    else:
        _copy_sharded(client, name, shards, raw)
    header = {f: raw[f] for f in _HEADER_FIELDS if raw.get(f)}
    header[SHARDS] = str(shards)
    header.setdefault("name", name)
    client.hset(keys.collection(name), mapping=header)  # the switch: readers see the collection from here
    client.delete(keys.legacy(name))
    return f"moved ({shards} shard{'s' if shards > 1 else ''})"


def _move_unsharded(client: redis.Redis, name: str, raw: dict[str, str]) -> None:
    for what in _DATA:
        _rename(client, keys.legacy(name, what), f"{keys.shard(name, 0)}:{what}")
    for old in client.scan_iter(match=keys.legacy(name, "tomb:*"), count=BATCH):
        _rename(client, _s(old), keys.tombstone(name, 0, _s(old).rsplit(":", 1)[1]))
    _rename(client, keys.legacy(name, "snapshot"), keys.snapshot(name, 0))
    # The shard's version is the collection's: the log's entries are numbered by it.
    fields = {f: raw[f] for f in _SHARD_FIELDS if raw.get(f)}
    client.hset(keys.shard(name, 0), mapping={**fields, VERSION: raw.get(VERSION) or "0"})


def _copy_sharded(client: redis.Redis, name: str, shards: int, raw: dict[str, str]) -> None:
    for what in ("images", "vectors", "thumbs"):
        old = keys.legacy(name, what)
        cursor = 0
        while True:
            cursor, chunk = client.hscan(old, cursor, count=BATCH)
            pipe = client.pipeline(transaction=False)
            for image_id, value in chunk.items():
                pipe.hset(f"{keys.shard(name, shard_of(_s(image_id), shards))}:{what}", image_id, value)
            pipe.execute()
            if cursor == 0:
                break
    order = keys.legacy(name, "order")
    for start in range(0, int(client.zcard(order)), BATCH):
        pipe = client.pipeline(transaction=False)
        for image_id, score in client.zrange(order, start, start + BATCH - 1, withscores=True):
            pipe.zadd(keys.order(name, shard_of(_s(image_id), shards)), {image_id: score})
        pipe.execute()
    for old in client.scan_iter(match=keys.legacy(name, "tomb:*"), count=BATCH):
        image_id = _s(old).rsplit(":", 1)[1]
        _rename(client, _s(old), keys.tombstone(name, shard_of(image_id, shards), image_id))
    fields = {f: raw[f] for f in _SHARD_FIELDS if raw.get(f)}
    for shard in range(shards):
        # New logs, empty: the version only has to be one its (rebuilt) replicas can follow.
        client.hset(keys.shard(name, shard), mapping={**fields, VERSION: client.hlen(keys.images(name, shard))})
    legacy_snapshots = [keys.legacy(name, f"snapshot:s{s}") for s in range(shards)]
    client.delete(*(f"{keys.legacy(name, what)}" for what in (*_DATA, "snapshot")), *legacy_snapshots)


def migrate_jobs(client: redis.Redis) -> int:
    """Jobs and quota sets of the old layout, renamed into their slots; returns keys moved."""
    moved = 0
    for raw in client.scan_iter(match="ss:job:*", count=BATCH):
        key = _s(raw)
        if "{" in key:
            continue
        rest = key[len("ss:job:") :]
        job_id, _, tail = rest.partition(":")
        moved += _rename(client, key, f"ss:job:{{{job_id}}}" + (f":{tail}" if tail else ""))
    for raw in client.scan_iter(match=f"{keys.OWNER_OPEN_PREFIX}*", count=BATCH):
        key = _s(raw)
        if "{" in key:
            continue
        owner, _, what = key[len(keys.OWNER_OPEN_PREFIX) :].rpartition(":")
        moved += _rename(client, key, f"{keys.OWNER_OPEN_PREFIX}{{{owner}}}:{what}")
    return moved
