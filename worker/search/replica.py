"""Each worker's in-memory replica of every collection it serves, kept current from Redis.

Redis is the source of truth: `vectors` holds every live vector and `log` (a capped stream)
records each add and delete in order, each entry numbered with the collection's version (`n`).
A replica remembers the last entry it applied; before answering a search it applies whatever
came after, so a search submitted after an index job finished sees that job's images on every
worker. If the next entry it reads is not numbered one past its own, entries were trimmed away
before it read them (the replica fell behind the log's cap), and it rebuilds from the vectors.

A replica's index is a `shared.ann.AnnIndex`: exact float32 rows for small collections, an IVF
index of 4-bit codes with exact re-ranking from the float16 vectors in Redis for large ones. A
replica that must be built starts from the newest snapshot (`worker.search.snapshots`) when there is one
and replays the log after it; otherwise it is built from the vectors in one pass.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shared import vectors
from shared.ann import AnnIndex, AnnParams, FetchVectors
from shared.filters import Filter
from shared.schemas import SearchParams, Threshold
from shared.shards import shard_of
from worker.search.calibration import NoMatchPolicy, calibrate, requested, stale
from worker.search.metadata_index import MetadataIndex
from worker.search.snapshots import Snapshots
from worker.store import StreamEntry, WorkerStore

log = logging.getLogger(__name__)

MAX_REBUILDS = 5


def release_freed_memory() -> None:
    """Hand memory freed after a build (training sample, decoded chunks, the snapshot's bytes) back
    to the OS: glibc keeps freed small blocks in its arenas, which shows as RSS for the worker's life."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _of(replica: Replica) -> str:
    return f" shard {replica.shard}/{replica.shards}" if replica.shards > 1 else ""


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


def entry_number(entry: StreamEntry) -> int | None:
    raw = entry[1].get(b"n", entry[1].get("n"))  # type: ignore[call-overload]
    return int(raw) if raw is not None else None


def contiguous(version: int, entries: list[StreamEntry]) -> bool:
    """Whether `entries` (read after a replica at `version`) follow it with nothing missing.
    Entries written before numbering existed carry no `n` and are taken on trust."""
    for expected, entry in enumerate(entries, start=version + 1):
        n = entry_number(entry)
        if n is not None and n != expected:
            return False
    return True


@dataclass
class Replica:
    model: str
    index: AnnIndex
    last_id: str = "0-0"
    version: int = 0  # the shard's version the replica reflects (n of the last entry applied)
    # collection -> (clustering id, centroids, labels): one dict shared by every replica of the
    # ReplicaSet (see `ReplicaSet.clusterings`), so shards of one collection load the labels once
    clusterings: dict[str, tuple[str, Any, dict[str, int]]] = field(default_factory=dict)
    shard: int = 0  # which shard of the collection this replica holds (of `shards`)
    shards: int = 1
    metadata: MetadataIndex | None = None  # built by the first filtered search (filter_mask)
    # (version, threshold) of the last no-match calibration (worker/search/calibration.py)
    calibration: tuple[int, Threshold | None] | None = None
    embedding: str | None = None  # model@input size of its vectors (shard answers carry it)

    @property
    def part(self) -> str:
        """Names the shard in snapshot keys; "" for an unsharded collection."""
        return f"s{self.shard}" if self.shards > 1 else ""

    def holds(self, image_id: str) -> bool:
        return self.shards <= 1 or shard_of(image_id, self.shards) == self.shard


class ReplicaSet:
    def __init__(
        self,
        store: WorkerStore,
        batch: int = 2000,
        params: AnnParams | None = None,
        snapshots: Snapshots | None = None,
        no_match: NoMatchPolicy | None = None,
    ) -> None:
        self.store = store
        self.no_match = no_match or NoMatchPolicy()
        self.batch = batch
        self.params = params or AnnParams()
        self.snapshots = snapshots
        self._replicas: dict[tuple[str, int], Replica] = {}  # (collection, shard) -> replica
        self.rebuilds = 0  # how many times a replica was built from the vectors (tests, metrics)
        self.restores = 0  # how many times one was loaded from a snapshot
        self.clusterings: dict[str, tuple[str, Any, dict[str, int]]] = {}  # shared by the replicas

    def sync(self, collection: str, shard: int = 0, shards: int = 1) -> Replica | None:
        """The replica of the collection's `shard` (of `shards`), current as of now; None if the
        collection holds no vectors yet."""
        key = (collection, shard)
        for _ in range(MAX_REBUILDS):
            state, last_entry = self.store.shard_position(collection, shard)
            model, dim, version = state.model, state.dim, state.version
            if model is None or dim is None:
                self._replicas.pop(key, None)
                return None
            replica = self._replicas.get(key)
            if (
                replica is not None
                and replica.model == model
                and replica.embedding == state.embedding
                and replica.index.dim == dim
                and replica.shards == shards
                # A version below ours: Redis lost writes (restored, failed over): trust nothing.
                and version >= replica.version
                # The same version and last log entry as ours: nothing to read (the hot path of a
                # search into a collection that is not changing).
                and (
                    (version == replica.version and last_entry == replica.last_id)
                    or self._catch_up(collection, replica)
                )
            ):
                return replica
            self._replicas.pop(key, None)
            blank = Replica(
                model=model,
                index=None,  # type: ignore[arg-type]
                shard=shard,
                shards=shards,
                clusterings=self.clusterings,
                embedding=state.embedding,
            )
            replica = self._restore(collection, blank, dim, version) or self._rebuild(collection, blank, dim)
            if replica is not None:
                self._replicas[key] = replica
                return replica
        raise RuntimeError(f"the vectors of {collection!r} kept being replaced while this worker read them")

    def held(self) -> dict[tuple[str, int], int]:
        """(collection, shard) -> vectors held: what this worker keeps in memory (tests, metrics)."""
        return {key: len(replica.index) for key, replica in self._replicas.items()}

    def maintain(self, collection: str, shard: int = 0) -> None:
        """Housekeeping after a search was answered: write a snapshot if one is due."""
        replica = self._replicas.get((collection, shard))
        if self.snapshots is None or replica is None:
            return
        if self.snapshots.due(collection, replica.version, replica.index, replica.shard, replica.part):
            self.snapshots.save(
                collection, replica.model, replica.version, replica.last_id, replica.index, replica.shard, replica.part
            )

    def threshold(self, replica: Replica, params: SearchParams) -> Threshold | None:
        """The similarity a match must reach: the caller's, else the collection's calibrated one
        (recomputed as the collection changes), else none."""
        asked = requested(params)
        if asked is not False:
            return asked  # type: ignore[return-value]
        if not self.no_match.enabled:
            return None
        cached = replica.calibration
        if cached is None or stale(cached[0], len(replica.index), replica.version):
            cached = (
                replica.version,
                calibrate(replica.index, self.no_match.floor_of(replica.model), self.no_match.percentile),
            )
            replica.calibration = cached
        return cached[1]

    def filter_mask(self, collection: str, replica: Replica, node: Filter) -> np.ndarray:
        """A boolean per row of the replica's index: the images whose metadata passes the filter."""
        if replica.metadata is None or replica.metadata.wasteful:
            replica.metadata = MetadataIndex(replica.index.ids)
        replica.metadata.ensure(node, lambda ids: self.store.metadata_of(collection, ids))
        return replica.metadata.mask(node, replica.index, (id(replica.index), replica.version))

    def fetcher(self, collection: str, dim: int, shard: int | None) -> FetchVectors:
        """Source-of-truth vectors by id for re-ranking: one HMGET of the shard's vectors (None:
        each id's shard, for whole-collection reads); a vector
        deleted (or replaced by one of another dimension) since the replica last synced comes back
        as NaN: no match."""

        def fetch(ids: list[str]) -> np.ndarray:
            raw = self.store.raw_vectors(collection, ids, shard)
            out = np.full((len(ids), dim), np.nan, dtype=np.float32)
            present = [k for k, r in enumerate(raw) if r is not None and vectors.fits(r, dim)]
            if present:
                out[present] = vectors.decode_many([raw[k] for k in present], dim)  # type: ignore[misc]
            return out

        return fetch

    def _restore(self, collection: str, blank: Replica, dim: int, version: int) -> Replica | None:
        """The replica from the newest snapshot plus the log after it, or None to rebuild."""
        if self.snapshots is None:
            return None
        model = blank.model
        info = self.snapshots.latest(collection, blank.shard)
        if info is None or info.model != model or info.dim != dim or info.version > version:
            return None
        loaded = self.snapshots.load(collection, self.fetcher(collection, dim, blank.shard), self.params, blank.shard)
        if loaded is None:
            return None
        info, index = loaded
        # The pointer may have moved on since it was first read (another worker published): judge
        # it against the collection as it is now.
        now = self.store.shard_state(collection, blank.shard)
        model_now, dim_now, version_now = now.model, now.dim, now.version
        if info.model != model_now or info.dim != dim_now or info.version > version_now or model_now != model:
            return None
        replica = replace(blank, index=index, last_id=info.last_id, version=info.version)
        if not self._catch_up(collection, replica):
            log.info("snapshot of %s at version %d is too old for the log; rebuilding", collection, info.version)
            return None
        self.restores += 1
        release_freed_memory()
        log.info("restored replica of %s%s from a snapshot: %d vectors", collection, _of(replica), len(index))
        return replica

    def _rebuild(self, collection: str, blank: Replica, dim: int) -> Replica | None:
        """A replica built from the vectors, or None if they were replaced (re-embedded) while
        being read: the caller starts over with the collection's new model and dimension."""
        # Note the log position first: replaying everything after it over the snapshot converges,
        # whatever changed while the snapshot was being read.
        last_id, version = self.store.log_position(collection, blank.shard)
        swapped = False

        def chunks():
            nonlocal swapped
            cursor = 0
            while True:
                cursor, chunk = self.store.scan_vectors(collection, blank.shard, cursor, self.batch)
                fresh = {_s(k): v for k, v in chunk.items() if vectors.fits(v, dim)}
                if len(fresh) != len(chunk):
                    swapped = True  # vectors of another dimension: swapped under us
                    return
                ids = list(fresh)  # the shard's keys hold its images only: nothing else is read
                if ids:
                    yield ids, vectors.decode_many([fresh[i] for i in ids], dim)
                if cursor == 0:
                    return

        total = self.store.vector_count(collection, blank.shard)
        index = AnnIndex.bulk(dim, total, chunks(), self.fetcher(collection, dim, blank.shard), self.params)
        if swapped:
            return None
        replica = replace(blank, index=index, last_id=last_id, version=version)
        if not self._catch_up(collection, replica):
            return None
        self.rebuilds += 1
        release_freed_memory()
        log.info(
            "rebuilt replica of %s%s: %d vectors (%s)",
            collection,
            _of(replica),
            len(index),
            "exact" if index.exact else "ann",
        )
        return replica

    def _catch_up(self, collection: str, replica: Replica) -> bool:
        """Apply log entries after `last_id`. False if the replica must be rebuilt instead: entries
        were trimmed away before we read them, or the vectors were replaced wholesale."""
        while True:
            entries = self.store.log_after(collection, replica.shard, replica.last_id, self.batch)
            if not entries:
                return True
            if not contiguous(replica.version, entries):
                log.warning("replica of %s fell behind the log's cap; rebuilding", collection)
                return False
            final, last_id = fold_log(entries)
            if "reset" in final.values():  # vectors were swapped wholesale (re-embed): start over
                return False
            added = [i for i, op in final.items() if op == "add"]
            removed = [i for i, op in final.items() if op == "del"]
            replica.index.remove(removed)
            present: dict[str, bytes] = {}
            if added:
                raw = self.store.raw_vectors(collection, added, replica.shard)
                present = {i: v for i, v in zip(added, raw, strict=True) if v is not None}
                # A vector missing here was deleted after this entry; its 'del' entry follows.
                replica.index.remove(i for i in added if i not in present)
                self._apply_vectors(replica, present)
            if replica.metadata is not None:
                gone = [*removed, *(i for i in added if i not in present)]
                read = lambda ids: self.store.metadata_of(collection, ids)  # noqa: E731
                replica.metadata.apply(list(present), gone, read)
            replica.last_id = last_id or replica.last_id
            replica.version = entry_number(entries[-1]) or replica.version

    def _apply_vectors(self, replica: Replica, raw: dict[str, bytes]) -> None:
        if not raw:
            return
        ids = list(raw)
        replica.index.upsert(ids, vectors.decode_many([raw[i] for i in ids], replica.index.dim))
