"""Each worker's in-memory replica of every collection it serves, kept current from Redis.

Redis is the source of truth: `vectors` holds every live vector and `log` (a stream) records each
add and delete in order. A replica remembers the last log entry it applied; before answering a
search it applies whatever came after, so a search submitted after an index job finished sees
that job's images on every worker. A new or restarted worker rebuilds from a snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from shared import keys
from shared.index import VectorIndex

log = logging.getLogger(__name__)

StreamEntry = tuple[bytes | str, dict[bytes | str, bytes | str]]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stream_id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def fold_log(entries: Iterable[StreamEntry]) -> tuple[dict[str, str], str | None]:
    """Reduce log entries to the last operation per image id (ops are idempotent: last one wins)."""
    final: dict[str, str] = {}
    last_id: str | None = None
    for entry_id, fields in entries:
        data = {_s(k): _s(v) for k, v in fields.items()}
        final[data["id"]] = data["op"]
        last_id = _s(entry_id)
    return final, last_id


@dataclass
class Replica:
    model: str
    index: VectorIndex
    last_id: str = "0-0"
    # (clustering id, centroids, labels): loaded when a clustering exists, reloaded when it changes
    clustering: tuple[str, Any, dict[str, int]] | None = None


class ReplicaSet:
    def __init__(self, client: redis.Redis, batch: int = 2000) -> None:
        self.redis = client
        self.batch = batch
        self._replicas: dict[str, Replica] = {}

    def sync(self, collection: str) -> Replica | None:
        """The collection's replica, current as of now; None if it holds no vectors yet."""
        model, dim = self.redis.hmget(keys.collection(collection), "model", "dim")
        if model is None or dim is None:
            self._replicas.pop(collection, None)
            return None
        replica = self._replicas.get(collection)
        if (
            replica is None
            or replica.model != _s(model)
            or replica.index.dim != int(dim)
            or not self._catch_up(collection, replica)
        ):
            replica = self._rebuild(collection, _s(model), int(dim))
        self._replicas[collection] = replica
        return replica

    def _rebuild(self, collection: str, model: str, dim: int) -> Replica:
        # Note the log position first: replaying everything after it over the snapshot converges,
        # whatever changed while the snapshot was being read.
        tail = self.redis.xrevrange(keys.log(collection), count=1)
        replica = Replica(model=model, index=VectorIndex(dim), last_id=_s(tail[0][0]) if tail else "0-0")
        cursor = 0
        while True:
            cursor, chunk = self.redis.hscan(keys.vectors(collection), cursor, count=self.batch)
            self._apply_vectors(collection, replica, {_s(k): v for k, v in chunk.items()})
            if cursor == 0:
                break
        self._catch_up(collection, replica)
        log.info("rebuilt replica of %s: %d vectors", collection, len(replica.index))
        return replica

    def _catch_up(self, collection: str, replica: Replica) -> bool:
        """Apply log entries after `last_id`. False if the replica must be rebuilt instead: entries
        were trimmed away before we read them, or the vectors were replaced wholesale."""
        while True:
            entries = self.redis.xrange(keys.log(collection), min=f"({replica.last_id}", count=self.batch)
            if not entries:
                return True
            if replica.last_id != "0-0" and self._trimmed_past(collection, replica.last_id):
                return False
            final, last_id = fold_log(entries)
            if "reset" in final.values():  # vectors were swapped wholesale (re-embed): start over
                return False
            added = [i for i, op in final.items() if op == "add"]
            removed = [i for i, op in final.items() if op == "del"]
            replica.index.remove(removed)
            if added:
                raw = self.redis.hmget(keys.vectors(collection), added)
                present = {i: v for i, v in zip(added, raw, strict=True) if v is not None}
                # A vector missing here was deleted after this entry; its 'del' entry follows.
                replica.index.remove(i for i in added if i not in present)
                self._apply_vectors(collection, replica, present)
            replica.last_id = last_id or replica.last_id

    def _trimmed_past(self, collection: str, last_id: str) -> bool:
        info = self.redis.xinfo_stream(keys.log(collection))
        max_deleted = info.get("max-deleted-entry-id")
        return max_deleted is not None and stream_id_key(_s(max_deleted)) > stream_id_key(last_id)

    def _apply_vectors(self, collection: str, replica: Replica, raw: dict[str, bytes]) -> None:
        if not raw:
            return
        ids = list(raw)
        matrix = np.frombuffer(b"".join(raw[i] for i in ids), dtype="<f4").reshape(len(ids), -1)
        replica.index.upsert(ids, matrix)
