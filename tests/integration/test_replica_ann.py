"""Approximate replicas and their snapshots against a real Redis and blob store: results equal exact
search, a snapshot plus the log after it equals a rebuild, and the interleavings that could make a
snapshot lie (a delete between a sync and a snapshot, a trimmed log, a damaged or stale snapshot,
two workers publishing at once) cost at most a rebuild."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest

from bench.spread import synthetic
from shared import keys
from shared.ann import AnnParams
from shared.collections import ops
from shared.schemas import ImageRecord, utcnow
from shared.shards import shard_of
from tests.integration.inprocess import Harness, PixelEmbedder
from worker.search.replica import ReplicaSet
from worker.search.snapshots import Snapshots
from worker.store import Embedding, NewImage

DIM = 256
N = 3_000
EMBEDDING = Embedding("efficientnet-lite0", "efficientnet-lite0@256", DIM)
# Approximate from 1,000 vectors (an IVF index, trained), but re-ranking every vector: answers
# that depend only on which vectors the replica holds, not on how its index was trained, so two
# replicas compare by their content.
EVERY_ROW = AnnParams(threshold=1_000, candidates=10_000, background=False)
APPROXIMATE = AnnParams(threshold=1_000, background=False)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return synthetic(N + 400, DIM, seed=5)


@pytest.fixture
def name() -> str:
    return f"ann-{uuid.uuid4().hex[:8]}"


def image_id(row: int) -> str:
    return hashlib.sha256(str(row).encode()).hexdigest()[:32]  # like content ids: spread over shards


def add(h: Harness, collection: str, data: np.ndarray, rows: range | list[int], seq: int = 0) -> None:
    now = utcnow()
    images = [
        NewImage(
            ImageRecord(
                image_id=image_id(r), filename=f"{r}.jpg", format="JPEG", width=1, height=1, size=0, created_at=now
            ),
            data[r],
        )
        for r in rows
    ]
    for start in range(0, len(images), 500):
        h.store.add_images(collection, EMBEDDING, seq, images[start : start + 500])


def replicas(h: Harness, params: AnnParams = EVERY_ROW, snapshots: bool = True, every: int = 1) -> ReplicaSet:
    snaps = Snapshots(h.client, h.blobs, every=every) if snapshots else None
    return ReplicaSet(h.store, batch=500, params=params, snapshots=snaps)


def answers(rs: ReplicaSet, collection: str, data: np.ndarray, rows: list[int], k: int = 10):
    replica = rs.sync(collection)
    assert replica is not None
    return [replica.index.search(data[r], k, exclude=image_id(r)) for r in rows]


def same_answers(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]]) -> bool:
    """The same ids with the same similarities (to float32 rounding: BLAS sums a row differently
    depending on where it sits in memory, and two replicas hold their rows in different orders)."""
    return len(a) == len(b) and all(
        dict(x).keys() == dict(y).keys() and all(abs(dict(y)[i] - s) < 1e-6 for i, s in x)
        for x, y in zip(a, b, strict=True)
    )


@pytest.fixture
def h(redis_url: str) -> Harness:
    return Harness(redis_url, PixelEmbedder())


def test_an_approximate_replica_answers_like_exact_search(h: Harness, name: str, data: np.ndarray) -> None:
    add(h, name, data, range(N))
    approx = replicas(h, APPROXIMATE, snapshots=False)
    exact = replicas(h, AnnParams(threshold=10**9), snapshots=False)
    rows = list(range(0, N, 60))
    got, want = answers(approx, name, data, rows), answers(exact, name, data, rows)
    assert not approx.sync(name).index.exact and exact.sync(name).index.exact
    recall = np.mean([len({i for i, _ in g} & {i for i, _ in w}) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.97
    # Re-ranked from the float16 vectors in Redis: every similarity is the exact one, in exact order.
    for g, w in zip(got, want, strict=True):
        truth = dict(w)
        for image, sim in g:
            if image in truth:
                assert sim == pytest.approx(truth[image], abs=1e-6)
        assert [s for _, s in g] == sorted((s for _, s in g), reverse=True)


def test_snapshot_plus_log_replay_equals_a_full_rebuild(h: Harness, name: str, data: np.ndarray) -> None:
    add(h, name, data, range(N))
    first = replicas(h)
    first.sync(name)
    first.maintain(name)
    pointer = Snapshots(h.client, h.blobs, 1).latest(name)
    assert pointer is not None and pointer.count == N and h.blobs.exists(pointer.key)
    # After the snapshot: adds, deletes of old and new images, a delete and re-add.
    add(h, name, data, range(N, N + 300))
    gone = [*range(0, 300, 3), *range(N, N + 300, 7)]
    for r in gone:
        assert h.delete(name, image_id(r))
    add(h, name, data, [3, 6], seq=1 << 40)  # re-added by a job queued after the deletes
    restored, rebuilt = replicas(h), replicas(h, snapshots=False)
    queries = list(range(1, N + 300, 97))
    from_snapshot, from_vectors = answers(restored, name, data, queries), answers(rebuilt, name, data, queries)
    assert (restored.restores, restored.rebuilds, rebuilt.rebuilds) == (1, 0, 1)
    live = h.vector_ids(name)
    assert set(restored.sync(name).index.ids) == set(rebuilt.sync(name).index.ids) == live
    assert image_id(3) in live and image_id(0) not in live
    assert not restored.sync(name).index.exact and not rebuilt.sync(name).index.exact
    exact = answers(replicas(h, AnnParams(threshold=10**9), snapshots=False), name, data, queries)
    assert same_answers(from_snapshot, from_vectors) and same_answers(from_vectors, exact)
    # With the default candidates, the restored index (trained on the snapshot's vectors) finds
    # what exact search finds.
    tuned = answers(replicas(h, APPROXIMATE), name, data, queries)
    assert np.mean([len(set(t) & set(e)) / 10 for t, e in zip(tuned, exact, strict=True)]) >= 0.97


def test_a_delete_between_a_sync_and_the_snapshot_is_replayed(h: Harness, name: str, data: np.ndarray) -> None:
    add(h, name, data, range(N))
    writer = replicas(h)
    writer.sync(name)
    assert h.delete(name, image_id(7))  # lands after the writer's sync, before its snapshot
    writer.maintain(name)  # the snapshot still holds image 7, and says so by its log position
    assert image_id(7) in writer._replicas[(name, 0)].index
    reader = replicas(h)
    replica = reader.sync(name)
    assert reader.restores == 1 and image_id(7) not in replica.index
    assert image_id(7) not in {i for i, _ in replica.index.search(data[7], 10)}


def test_a_vector_deleted_after_the_sync_is_never_returned(h: Harness, name: str, data: np.ndarray) -> None:
    add(h, name, data, range(N))
    rs = replicas(h, snapshots=False)
    replica = rs.sync(name)
    assert h.delete(name, image_id(11))  # between the sync and the search's re-rank
    hits = replica.index.search(data[11], 10)  # its own vector as the query: it would come first
    assert hits and image_id(11) not in {i for i, _ in hits}


def test_a_snapshot_older_than_the_log_cap_is_not_used(redis_url: str, name: str, data: np.ndarray) -> None:
    h = Harness(redis_url, PixelEmbedder(), log_maxlen=100)
    add(h, name, data, range(N))
    writer = replicas(h)
    writer.sync(name)
    writer.maintain(name)
    add(h, name, data, range(N, N + 300))  # 300 entries: the snapshot's position is trimmed away
    reader = replicas(h)
    replica = reader.sync(name)
    assert (reader.restores, reader.rebuilds) == (0, 1)
    assert set(replica.index.ids) == h.vector_ids(name)


def test_a_damaged_snapshot_costs_a_rebuild_not_a_wrong_answer(h: Harness, name: str, data: np.ndarray) -> None:
    add(h, name, data, range(N))
    writer = replicas(h)
    writer.sync(name)
    writer.maintain(name)
    pointer = Snapshots(h.client, h.blobs, 1).latest(name)
    h.blobs.put(pointer.key, b"PK\x03\x04 not a snapshot")
    reader = replicas(h)
    replica = reader.sync(name)
    assert (reader.restores, reader.rebuilds) == (0, 1) and len(replica.index) == N


def test_a_snapshot_from_a_newer_redis_is_ignored(h: Harness, name: str, data: np.ndarray) -> None:
    add(h, name, data, range(N))
    writer = replicas(h)
    writer.sync(name)
    writer.maintain(name)
    # Redis restored from an older dump: the shard's version is now below the snapshot's.
    h.client.hset(keys.shard(name, 0), "version", N - 10)
    reader = replicas(h)
    reader.sync(name)
    assert (reader.restores, reader.rebuilds) == (0, 1)
    reader.maintain(name)  # and a fresh snapshot replaces the one from the future
    assert Snapshots(h.client, h.blobs, 1).latest(name).version == N - 10


def test_a_snapshot_of_history_redis_lost_is_not_published(h: Harness, name: str, data: np.ndarray) -> None:
    add(h, name, data, range(N))
    rs = replicas(h)
    rs.sync(name)  # at version N
    h.client.hset(keys.shard(name, 0), "version", N - 100)  # Redis restored from an older dump
    replica = rs._replicas[(name, 0)]
    snaps = Snapshots(h.client, h.blobs, 1)
    assert snaps.save(name, replica.model, replica.version, replica.last_id, replica.index) is None
    assert snaps.latest(name) is None
    assert _blob_keys(h, name) == []  # the refused snapshot's blob is deleted


def test_only_a_newer_snapshot_is_published(h: Harness, name: str, data: np.ndarray) -> None:
    add(h, name, data, range(N))
    behind, ahead = replicas(h), replicas(h)
    behind.sync(name)  # at version N
    add(h, name, data, range(N, N + 50))
    ahead.sync(name)  # at version N + 50
    snaps = Snapshots(h.client, h.blobs, 1)
    newer = snaps.save(
        name, "efficientnet-lite0", N + 50, ahead._replicas[(name, 0)].last_id, ahead._replicas[(name, 0)].index
    )
    older = snaps.save(
        name, "efficientnet-lite0", N, behind._replicas[(name, 0)].last_id, behind._replicas[(name, 0)].index
    )
    assert newer is not None and older is None
    assert snaps.latest(name).key == newer.key
    assert not any(k.startswith(f"snapshots/{name}/{N}-") for k in _blob_keys(h, name))


def test_a_snapshot_is_not_written_while_another_worker_writes_one(h: Harness, name: str, data: np.ndarray) -> None:
    add(h, name, data, range(N))
    rs = replicas(h)
    rs.sync(name)
    held = h.client.lock(keys.snapshot_lock(name, 0), timeout=30)
    assert held.acquire(blocking=False)
    rs.maintain(name)
    assert Snapshots(h.client, h.blobs, 1).latest(name) is None
    held.release()
    rs.maintain(name)
    assert Snapshots(h.client, h.blobs, 1).latest(name) is not None


def _blob_keys(h: Harness, collection: str) -> list[str]:
    root = h.blobs.root  # type: ignore[attr-defined]
    return [str(p.relative_to(root)) for p in (root / "snapshots" / collection).glob("*")]


def test_shard_replicas_hold_their_shard_and_counts_follow_adds_and_deletes(
    h: Harness, name: str, data: np.ndarray
) -> None:
    assert h.store.data.run(ops.create(name, 3, utcnow())) == (True, 3)
    assert h.store.data.run(ops.create(name, 5, utcnow())) == (False, 3)  # fixed
    add(h, name, data, range(1_500))
    for r in range(0, 1_500, 10):
        assert h.delete(name, image_id(r))
    rs = replicas(h, AnnParams(threshold=10**9), snapshots=False)
    parts = [rs.sync(name, shard, 3) for shard in range(3)]
    live = h.vector_ids(name)
    want = [{i for i in live if shard_of(i, 3) == s} for s in range(3)]
    assert [set(p.index.ids) for p in parts] == want
    assert list(h.store.header(name).shard_counts) == [len(w) for w in want]
    # Each shard's replica read its own shard's keys only: nothing of the others' is in them.
    assert [h.client.hlen(keys.images(name, s)) for s in range(3)] == [len(w) for w in want]
    # Catching up from the log keeps each replica to its shard.
    add(h, name, data, range(1_500, 1_800))
    assert h.delete(name, image_id(1_501))
    live = h.vector_ids(name)
    for shard in range(3):
        assert set(rs.sync(name, shard, 3).index.ids) == {i for i in live if shard_of(i, 3) == shard}
    assert rs.held() == {(name, s): len({i for i in live if shard_of(i, 3) == s}) for s in range(3)}
