"""The collection's header (`keys.collection(name)`) and each shard's (`keys.shard(name, i)`):
every field, and the one parser of each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.runner import text

# The fields, as the Lua scripts (shared/collections/lua.py) write them. The collection's:
NAME = "name"
CREATED_AT = "created_at"
MODEL = "model"  # the model that made the vectors (set by the first add, or a re-embed's swap)
EMBEDDING = "embedding"  # the model's full identity, model@input size
DIM = "dim"  # the vectors' dimension
SHARDS = "shards"  # absent: 1
REEMBED_JOB = "reembed_job"  # while a re-embed runs: its job id ...
REEMBED_EMBEDDING = "reembed_embedding"  # ... and the embedding it moves the collection to
LAST_REEMBED_JOB = "last_reembed_job"  # the re-embed that swapped last (a redelivered finisher)
# A shard's header has MODEL, EMBEDDING, DIM (the model of its vectors: a shard swaps on its own
# during a re-embed), the re-embed fields (copies of the collection's, which its scripts read),
# and:
VERSION = "version"  # the number of the shard's last change-log entry (every add, delete and reset)


@dataclass(frozen=True)
class CollectionHeader:
    name: str | None = None
    created_at: str | None = None
    model: str | None = None
    embedding: str | None = None
    dim: int | None = None
    version: int = 0  # the sum of the shards' versions: it moves with every change
    shards: int = 1
    shard_counts: tuple[int, ...] = ()  # images per shard, shard 0 first
    reembed_job: str | None = None
    reembed_embedding: str | None = None
    last_reembed_job: str | None = None

    @property
    def count(self) -> int:
        return sum(self.shard_counts)

    @classmethod
    def parse(
        cls, raw: Mapping[bytes | str, bytes | str], versions: tuple[int, ...] = (), counts: tuple[int, ...] = ()
    ) -> CollectionHeader:
        """`versions`, `counts`: each shard's, read from the shards' keys."""
        fields = {text(k): text(v) for k, v in raw.items()}
        shards = int(fields.get(SHARDS) or 1)
        return cls(
            name=fields.get(NAME),
            created_at=fields.get(CREATED_AT),
            model=fields.get(MODEL),
            embedding=fields.get(EMBEDDING),
            dim=int(dim) if (dim := fields.get(DIM)) else None,
            version=sum(versions),
            shards=shards,
            shard_counts=counts,
            reembed_job=fields.get(REEMBED_JOB),
            reembed_embedding=fields.get(REEMBED_EMBEDDING),
            last_reembed_job=fields.get(LAST_REEMBED_JOB),
        )


@dataclass(frozen=True)
class ShardHeader:
    model: str | None = None
    embedding: str | None = None
    dim: int | None = None
    version: int = 0
    reembed_job: str | None = None
    reembed_embedding: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[bytes | str, bytes | str]) -> ShardHeader:
        fields = {text(k): text(v) for k, v in raw.items()}
        return cls(
            model=fields.get(MODEL),
            embedding=fields.get(EMBEDDING),
            dim=int(dim) if (dim := fields.get(DIM)) else None,
            version=int(fields.get(VERSION) or 0),
            reembed_job=fields.get(REEMBED_JOB),
            reembed_embedding=fields.get(REEMBED_EMBEDDING),
        )
