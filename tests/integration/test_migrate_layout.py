"""`python -m worker.migrate` moves data of the layout before per-shard keys (written here by hand,
as that version wrote it) into the per-shard layout: idempotent, and resumable after a crash."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from shared import keys, vectors
from shared.collections import ops
from shared.schemas import ImageRecord
from shared.shards import shard_of
from tests.integration.inprocess import Harness, PixelEmbedder
from worker import migrate_layout
from worker.search.replica import ReplicaSet


def _legacy(client: redis.Redis, name: str, n: int, shards: int) -> dict[str, np.ndarray]:
    """A collection as the old layout held it: single keys, a collection-wide version and log."""
    rng = np.random.default_rng(n)
    ids = {f"{i * 7919:08x}{'0' * 24}": rng.standard_normal(8).astype(np.float32) for i in range(n)}
    header = {"name": name, "created_at": "2026-12-01T00:00:00Z", "model": "m", "embedding": "m@8", "dim": 8}
    header |= {"version": n, "shards": shards}
    for s in range(shards):
        header[f"count:{s}"] = sum(1 for i in ids if shard_of(i, shards) == s)
    client.hset(keys.legacy(name), mapping=header)
    client.sadd(keys.COLLECTIONS, name)
    for version, (image_id, vector) in enumerate(ids.items(), start=1):
        record = ImageRecord(
            image_id=image_id, filename=f"{version}.jpg", format="JPEG", width=1, height=1, size=1, created_at="x"
        )
        client.hset(keys.legacy(name, "images"), image_id, record.model_dump_json())
        client.hset(keys.legacy(name, "vectors"), image_id, vectors.encode(vector / np.linalg.norm(vector)))
        client.zadd(keys.legacy(name, "order"), {image_id: version})
        client.xadd(keys.legacy(name, "log"), {"op": "add", "id": image_id, "n": version})
    client.set(keys.legacy(name, f"tomb:{'f' * 32}"), 5, ex=3600)
    client.hset(keys.legacy(name, "clustering"), mapping={"job_id": "j", "k": 2})
    return ids


@pytest.mark.parametrize("shards", [1, 3])
def test_a_legacy_collection_moves_and_reads_as_before(redis_url: str, shards: int) -> None:
    h = Harness(redis_url, PixelEmbedder())
    name = f"legacy-{uuid.uuid4().hex[:8]}"
    ids = _legacy(h.client, name, 40, shards)
    assert name in migrate_layout.legacy_collections(h.client)
    assert h.store.data.run(ops.listed(name))[1] == 0  # the new version does not see it yet
    assert migrate_layout.migrate_collection(h.client, name).startswith("moved")
    header, count = h.store.data.run(ops.listed(name))
    assert (count, header.shards, header.model, header.dim) == (40, shards, "m", 8)
    assert h.vector_ids(name) == set(ids) and h.ids(name) == set(ids)
    assert [r.filename for r in h.store.records(name, list(ids))] == [f"{v}.jpg" for v in range(1, 41)]
    assert h.client.exists(keys.tombstone(name, shard_of("f" * 32, shards), "f" * 32))
    assert h.client.hget(keys.clustering(name), "job_id") == b"j"
    assert not list(h.client.scan_iter(f"{keys.legacy(name)}:*")) and not h.client.exists(keys.legacy(name))
    # Replicas of every shard build from the moved keys; an unsharded one keeps the log's numbering.
    replicas = ReplicaSet(h.store, batch=50)
    held = [set(replicas.sync(name, s, shards).index.ids) for s in range(shards)]
    assert held == [{i for i in ids if shard_of(i, shards) == s} for s in range(shards)]
    if shards == 1:
        assert replicas.sync(name).version == 40 and h.client.xlen(keys.log(name, 0)) == 40
    assert migrate_layout.migrate_collection(h.client, name) == "already in the per-shard layout"


def test_an_interrupted_move_is_finished_by_running_it_again(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(redis_url, PixelEmbedder())
    name = f"legacy-{uuid.uuid4().hex[:8]}"
    ids = _legacy(h.client, name, 30, 2)
    real = h.client.hset

    def dies_at_the_switch(key, *args, **kwargs):
        if key == keys.collection(name):
            raise SystemExit("killed before the switch")
        return real(key, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(h.client, "hset", dies_at_the_switch)
        with pytest.raises(SystemExit):
            migrate_layout.migrate_collection(h.client, name)
    assert name in migrate_layout.legacy_collections(h.client)  # not switched: still to move
    assert migrate_layout.migrate_collection(h.client, name).startswith("moved")
    assert h.vector_ids(name) == set(ids) and h.store.data.run(ops.listed(name))[1] == 30


def test_jobs_of_the_old_layout_are_renamed_into_their_slot(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    job_id = uuid.uuid4().hex
    client.hset(f"ss:job:{job_id}", mapping={"type": "index", "status": "queued", "total": 1})
    client.hset(f"ss:job:{job_id}:inputs", "0", "{}")
    client.zadd("ss:owner:carol:open", {job_id: 1})
    for key in (f"ss:job:{job_id}", f"ss:job:{job_id}:inputs", "ss:owner:carol:open"):
        client.expire(key, 3600)  # as the old version wrote them: RENAME keeps the TTL
    migrate_layout.migrate_jobs(client)
    assert client.hget(keys.job(job_id), "status") == b"queued" and client.hexists(keys.job_inputs(job_id), "0")
    assert 0 < client.ttl(keys.job(job_id)) <= 3600
    assert client.zscore(keys.owner_open("carol"), job_id) == 1
    assert not client.exists(f"ss:job:{job_id}", f"ss:job:{job_id}:inputs", "ss:owner:carol:open")
    migrate_layout.migrate_jobs(client)  # again: nothing left to move, nothing broken
    assert client.hget(keys.job(job_id), "status") == b"queued"


def test_a_stale_reembed_marker_and_a_put_first_do_not_strand_the_data(redis_url: str) -> None:
    """The old header names a re-embed whose job is gone; the new version created the collection
    (a PUT) before the migration ran: the data is merged in, not skipped, nothing left behind."""
    h = Harness(redis_url, PixelEmbedder())
    name = f"legacy-{uuid.uuid4().hex[:8]}"
    ids = _legacy(h.client, name, 12, 1)
    h.client.hset(keys.legacy(name), "reembed_job", uuid.uuid4().hex)  # expired long ago
    h.client.hset(keys.legacy(name, "vectors:next"), "x", b"stale")
    assert h.store.data.run(ops.create(name, 1, "2026-12-05T00:00:00Z")) == (True, 1)
    assert name in migrate_layout.legacy_collections(h.client)
    assert migrate_layout.migrate_collection(h.client, name).startswith("moved")
    assert h.vector_ids(name) == set(ids) and h.store.data.run(ops.listed(name))[1] == 12
    assert not h.client.exists(keys.legacy(name)) and not list(h.client.scan_iter(f"{keys.legacy(name)}:*"))
    assert h.client.hget(keys.collection(name), "model") == b"m"
