"""The collection hash (`keys.collection(name)`): every field, and the one parser of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.runner import text

# The fields, as the Lua scripts (shared/collections/lua.py) write them:
NAME = "name"
CREATED_AT = "created_at"
MODEL = "model"  # the model that made the vectors (set by the first add, or a re-embed's swap)
EMBEDDING = "embedding"  # the model's full identity, model@input size
DIM = "dim"  # the vectors' dimension
VERSION = "version"  # the number of the last change-log entry (every add, delete and reset)
SHARDS = "shards"  # absent: 1 (collections from before shards)
COUNT_PREFIX = "count:"  # count:<i>, images in shard i (kept only for sharded collections)
REEMBED_JOB = "reembed_job"  # while a re-embed runs: its job id ...
REEMBED_EMBEDDING = "reembed_embedding"  # ... and the embedding it moves the collection to
LAST_REEMBED_JOB = "last_reembed_job"  # the re-embed that swapped last (a redelivered finisher)


@dataclass(frozen=True)
class CollectionHeader:
    name: str | None = None
    created_at: str | None = None
    model: str | None = None
    embedding: str | None = None
    dim: int | None = None
    version: int = 0
    shards: int = 1
    shard_counts: tuple[int, ...] = ()  # sharded collections only
    reembed_job: str | None = None
    reembed_embedding: str | None = None
    last_reembed_job: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[bytes | str, bytes | str]) -> CollectionHeader:
        fields = {text(k): text(v) for k, v in raw.items()}
        shards = int(fields.get(SHARDS) or 1)
        counts = tuple(int(fields.get(f"{COUNT_PREFIX}{i}") or 0) for i in range(shards)) if shards > 1 else ()
        return cls(
            name=fields.get(NAME),
            created_at=fields.get(CREATED_AT),
            model=fields.get(MODEL),
            embedding=fields.get(EMBEDDING),
            dim=int(dim) if (dim := fields.get(DIM)) else None,
            version=int(fields.get(VERSION) or 0),
            shards=shards,
            shard_counts=counts,
            reembed_job=fields.get(REEMBED_JOB),
            reembed_embedding=fields.get(REEMBED_EMBEDDING),
            last_reembed_job=fields.get(LAST_REEMBED_JOB),
        )
