"""A sharded batch search's merge on a real Redis, step by step: the deadline merging a chunk
before its last shard answers, that shard answering late, and the job's final status."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from shared import keys
from shared.blobs_file import FileBlobStore
from shared.jobs import JobLifecycle, Jobs
from shared.jobs.scripts import SCRIPTS
from shared.schemas import JobInput, JobType
from worker.context import JobContext
from worker.search import batch_shards
from worker.store import WorkerStore

SHARDS = 2


def _ctx(client: redis.Redis, tmp_path: Path, queries: int, embedder: object = None) -> JobContext:
    jobs = Jobs(client, JobLifecycle(3600), SCRIPTS)
    job_id = uuid.uuid4().hex
    inputs = [JobInput(filename=f"q{i}", image_id=f"{i:032x}", size=0, stored=True) for i in range(queries)]
    jobs.create(job_id, JobType.batch_search, "coll", {"k": 3}, inputs)
    store = WorkerStore(client, FileBlobStore(tmp_path), log_maxlen=1000, data_ttl_s=3600)
    images = {
        f"{n:032x}": json.dumps(
            {
                "image_id": f"{n:032x}",
                "filename": f"img{n}",
                "format": "JPEG",
                "width": 1,
                "height": 1,
                "size": 1,
                "created_at": "x",
            }
        )
        for n in range(100, 110)
    }
    client.hset(keys.images("coll", 0), mapping=images)  # ids 0x00000000…: shard 0 of any number
    return JobContext(jobs.load(job_id), jobs, store, embedder, None, 0)  # type: ignore[arg-type]


def _stored_chunk(ctx: JobContext, first: int, count: int) -> None:
    rows = [
        {"index": i, "query": f"q{i}", "image_id": f"{i:032x}", "own": f"{i:032x}"} for i in range(first, first + count)
    ]
    ctx.store.put_batch_chunk(ctx.job_id, first, rows, np.zeros((count, 4), np.float32), 3600)


def _answer(ctx: JobContext, first: int, shard: int, hits: dict[int, list]) -> int:
    answer = {"answers": {str(i): h for i, h in hits.items()}}
    return ctx.store.record_shard(ctx.job_id, shard, answer, 3600, keys.batch_answers(ctx.job_id, first))


def _rows(client: redis.Redis, job_id: str) -> dict[int, dict]:
    return {int(k): json.loads(v) for k, v in client.hgetall(keys.job_results(job_id)).items()}


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_a_late_shard_after_the_deadline_restores_the_full_answer(client: redis.Redis, tmp_path: Path) -> None:
    ctx = _ctx(client, tmp_path, 4)
    _stored_chunk(ctx, 0, 2)
    _stored_chunk(ctx, 2, 2)
    a, b = f"{100:032x}", f"{101:032x}"
    assert _answer(ctx, 0, 0, {0: [[a, 0.9]], 1: [[a, 0.8]]}) == 1
    batch_shards.at_deadline(ctx, 0, SHARDS)  # shard 1 is late: chunk 0 merged without it
    rows = _rows(client, ctx.job_id)
    assert rows[0]["missing_shards"] == [1] and [m["image_id"] for m in rows[0]["matches"]] == [a]
    assert ctx.jobs.get(ctx.job_id).progress.done == 2
    # Shard 1 answers after all: its chunk is still there, and the fuller merge replaces the rows.
    assert _answer(ctx, 0, 1, {0: [[b, 0.95]], 1: [[b, 0.5]]}) == 2
    batch_shards.merge(ctx, 0, SHARDS)
    rows = _rows(client, ctx.job_id)
    assert "missing_shards" not in rows[0]
    assert [(m["image_id"], m["similarity"]) for m in rows[0]["matches"]] == [(b, 0.95), (a, 0.9)]
    assert [m["filename"] for m in rows[1]["matches"]] == ["img100", "img101"]
    assert ctx.jobs.get(ctx.job_id).progress.done == 2  # each query counted once
    assert not client.exists(keys.batch_chunk(ctx.job_id, 0), keys.batch_answers(ctx.job_id, 0))
    # The other chunk completes normally: the job succeeded (no chunk is left partial).
    _answer(ctx, 2, 0, {2: [], 3: []})
    _answer(ctx, 2, 1, {2: [[a, 0.1]], 3: []})
    batch_shards.merge(ctx, 2, SHARDS)
    job = ctx.jobs.get(ctx.job_id)
    assert job.status == "succeeded" and job.progress.done == 4
    # A deadline that comes after the merge finds nothing to do.
    batch_shards.at_deadline(ctx, 2, SHARDS)
    assert ctx.jobs.get(ctx.job_id).status == "succeeded"


def test_a_chunk_merged_without_a_shard_leaves_the_job_partial(client: redis.Redis, tmp_path: Path) -> None:
    ctx = _ctx(client, tmp_path, 2)
    _stored_chunk(ctx, 0, 2)
    _answer(ctx, 0, 1, {0: [[f"{100:032x}", 0.7]], 1: []})
    batch_shards.at_deadline(ctx, 0, SHARDS)
    job = ctx.jobs.get(ctx.job_id)
    assert job.status == "partial" and job.result["chunks_missing_shards"] == 1
    # The job has ended: a shard answering now is shed (the answer is not recorded).
    assert _answer(ctx, 0, 0, {0: [], 1: []}) == -1


def test_no_shard_answering_fails_the_chunk(client: redis.Redis, tmp_path: Path) -> None:
    ctx = _ctx(client, tmp_path, 2)
    _stored_chunk(ctx, 0, 2)
    batch_shards.at_deadline(ctx, 0, SHARDS)
    job = ctx.jobs.get(ctx.job_id)
    assert job.status == "failed" and {e.error for e in job.errors} == {"shards_unavailable"}


def _after_first_read(ctx: JobContext, meanwhile) -> None:
    """Run `meanwhile()` right after the next merge reads the chunk's answers (once): another
    task acting between two lines of that merge."""
    real = ctx.store.batch_answers
    done: list[bool] = []

    def read_then_act(job_id: str, first: int):
        got = real(job_id, first)
        if not done:
            done.append(True)
            meanwhile()
        return got

    object.__setattr__(ctx.store, "batch_answers", read_then_act)


def test_the_deadline_never_overwrites_a_fuller_merge(client: redis.Redis, tmp_path: Path) -> None:
    """The deadline reads one answer; the last shard then answers and merges before the deadline
    writes: the deadline's write is refused, the full rows stay, the job is not partial."""
    ctx = _ctx(client, tmp_path, 2)
    _stored_chunk(ctx, 0, 2)
    a, b = f"{100:032x}", f"{101:032x}"
    _answer(ctx, 0, 0, {0: [[a, 0.9]], 1: []})

    def the_last_shard_answers_and_merges() -> None:
        assert _answer(ctx, 0, 1, {0: [[b, 0.95]], 1: [[b, 0.4]]}) == 2
        batch_shards.merge(ctx, 0, SHARDS)

    _after_first_read(ctx, the_last_shard_answers_and_merges)
    batch_shards.at_deadline(ctx, 0, SHARDS)
    rows = _rows(client, ctx.job_id)
    assert "missing_shards" not in rows[0] and [m["image_id"] for m in rows[0]["matches"]] == [b, a]
    job = ctx.jobs.get(ctx.job_id)
    assert job.status == "succeeded" and job.progress.done == 2
    assert not client.exists(keys.batch_partial(ctx.job_id))


def test_a_shard_answering_during_the_deadline_merge_is_included(client: redis.Redis, tmp_path: Path) -> None:
    """Three shards: the deadline reads one answer, a second shard answers (not the last, so it
    does not merge): the deadline's write is refused and it merges again with both."""
    ctx = _ctx(client, tmp_path, 1)
    _stored_chunk(ctx, 0, 1)
    a, b = f"{100:032x}", f"{101:032x}"
    _answer(ctx, 0, 0, {0: [[a, 0.9]]})
    _after_first_read(ctx, lambda: _answer(ctx, 0, 2, {0: [[b, 0.95]]}))
    batch_shards.at_deadline(ctx, 0, 3)
    rows = _rows(client, ctx.job_id)
    assert rows[0]["missing_shards"] == [1] and [m["image_id"] for m in rows[0]["matches"]] == [b, a]
    assert ctx.jobs.get(ctx.job_id).status == "partial"


def test_a_worker_dying_while_storing_a_chunk_loses_no_failure(client: redis.Redis, tmp_path: Path) -> None:
    """A chunk of a sharded collection with one query that is gone: its failure is recorded before
    the chunk is stored, so a worker dying there and the redelivered task end the job exactly."""
    from types import SimpleNamespace

    from shared import vectors
    from worker.search import batch_search

    ctx = _ctx(client, tmp_path, 2, embedder=SimpleNamespace(name="m"))
    client.hset(keys.collection("coll"), mapping={"model": "m", "dim": 4, "shards": SHARDS})
    client.hset(keys.shard("coll", 0), mapping={"model": "m", "dim": 4})  # the shard its vectors are in
    client.hset(keys.vectors("coll", 0), f"{0:032x}", vectors.encode(np.array([1, 0, 0, 0], np.float32)))
    real = ctx.store.put_batch_chunk

    def dies(*args, **kwargs):
        raise SystemExit("the worker died here")

    object.__setattr__(ctx.store, "put_batch_chunk", dies)
    with pytest.raises(SystemExit):
        batch_search.search_batch_chunk(ctx, [0, 1])
    job = ctx.jobs.get(ctx.job_id)
    assert job.progress.done == 1 and job.errors[0].error == "image_not_found"  # q1's vector is not there
    object.__setattr__(ctx.store, "put_batch_chunk", real)
    assert batch_search.search_batch_chunk(ctx, [0, 1]) == SHARDS  # the redelivery stores the chunk
    assert batch_search.search_batch_chunk(ctx, [0, 1]) == SHARDS  # and a second one only resends it
    assert ctx.jobs.get(ctx.job_id).progress.done == 1
    _answer(ctx, 0, 0, {0: [[f"{100:032x}", 0.5]]})
    _answer(ctx, 0, 1, {0: []})
    batch_shards.merge(ctx, 0, SHARDS)
    job = ctx.jobs.get(ctx.job_id)
    assert job.status == "partial" and job.progress.done == 2 and job.progress.failed == 1
