"""Shards: a collection's images split over workers by a stable hash of their ids.

A collection has a fixed number of shards, set when it is created (`PUT /v1/collections/{c}` or
`DEFAULT_SHARDS`). An image's shard is its id's first 32 bits modulo that number: ids are the hex
SHA-256 prefix of the bytes, so this is uniform, the same in Python and in the Lua scripts (which
keep per-shard counts), and needs no table. Shard i of every collection is searched through the
queue `search.s{i}`, which the workers serving shard i consume (`WORKER_SHARDS`); embedding stays
shared (any worker embeds any chunk).
"""

from __future__ import annotations

MAX_SHARDS = 64  # a worker serving "all" consumes this many shard queues


def shard_of(image_id: str, shards: int) -> int:
    if shards <= 1:
        return 0
    try:
        return int(image_id[:8], 16) % shards
    except ValueError:  # not a content id (none are stored; kept total for robustness)
        return 0


def shard_queue(shard: int) -> str:
    return f"search.s{shard}"


def parse_shards(spec: str) -> frozenset[int] | None:
    """`all` -> None (every shard); `none` -> no shard (an embedding-only worker); else a set from
    e.g. `0-3`, `4,6`, `0-1,5`."""
    spec = spec.strip().lower()
    if spec in ("", "all", "*"):
        return None
    if spec == "none":
        return frozenset()
    out: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        lo, hi = int(first), int(last or first)
        if not 0 <= lo <= hi < MAX_SHARDS:
            raise ValueError(f"shard range {part!r} is not within 0-{MAX_SHARDS - 1}")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def serves(served: frozenset[int] | None, shard: int) -> bool:
    return served is None or shard in served
