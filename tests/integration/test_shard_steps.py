"""Steps that span Redis Cluster slots, interrupted on purpose between any two of them, against a
real Redis: an index chunk writes each shard with that shard's script, then records its items in
the job; a job's end is written in its slot, then in the deployment-wide sets. A worker killed
between two steps (SystemExit here, as the process's death) and the redelivered task must end
exactly as one clean run: no image lost, none twice, no outcome counted twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from shared import keys
from shared.collections import ops
from shared.imaging import content_id
from shared.jobs.lifecycle import JobLifecycle
from shared.schemas import ItemOutcome, ItemStatus, JobInput, JobStatus, JobType, utcnow
from shared.shards import shard_of
from tests.images import photo_bytes
from tests.integration.inprocess import Harness, PixelEmbedder
from tests.integration.services import start_redis
from worker.upkeep import watchdog

SHARDS = 4


@pytest.fixture
def name() -> str:
    return f"steps-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def h(redis_url: str, name: str) -> Harness:
    harness = Harness(redis_url, PixelEmbedder())
    assert harness.store.data.run(ops.create(name, SHARDS, utcnow())) == (True, SHARDS)
    return harness


def photos(first: int, count: int) -> list[tuple[str, bytes]]:
    return [(f"p{first + i}.jpg", photo_bytes(first + i, size=(64, 48))) for i in range(count)]


class Killed(SystemExit):
    pass


def _killing(monkeypatch: pytest.MonkeyPatch, target: object, attr: str, after: int) -> list[int]:
    """Let `after` calls of target.attr through, then kill the 'worker' at the next one, once."""
    real, calls = getattr(target, attr), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == after + 1:
            raise Killed(f"killed before call {calls[0]} of {attr}")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attr, wrapper)
    return calls


def _state(h: Harness, name: str) -> tuple:
    """Everything a rerun could change: each shard's records, vectors, version and log length."""
    return tuple(
        (
            h.client.hgetall(keys.images(name, s)),
            h.client.hgetall(keys.vectors(name, s)),
            h.client.hget(keys.shard(name, s), "version"),
            h.client.xlen(keys.log(name, s)),
        )
        for s in range(SHARDS)
    )


def _clean_run(redis_url: str, files: list[tuple[str, bytes]]) -> tuple:
    """The reference: the same chunk, run once without interruption, in a fresh collection."""
    name = f"clean-{uuid.uuid4().hex[:8]}"
    ref = Harness(redis_url, PixelEmbedder())
    ref.store.data.run(ops.create(name, SHARDS, utcnow()))
    job = ref.index(name, files)
    versions = [int(ref.client.hget(keys.shard(name, s), "version") or 0) for s in range(SHARDS)]
    return job.progress, sorted(job.result["created"]), versions


@pytest.mark.parametrize("shards_written", [0, 1, 2, 3])
def test_a_chunk_killed_between_two_shard_writes_converges(
    h: Harness, name: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, shards_written: int
) -> None:
    files = photos(100, 24)
    assert len({shard_of(content_id(d), SHARDS) for _, d in files}) == SHARDS  # every shard is written
    job_id = h.submit(name, files)
    with monkeypatch.context() as m:
        _killing(m, ops, "add_images", after=shards_written)
        with pytest.raises(Killed):
            h.run_index(job_id, len(files))
    job = h.run_index(job_id, len(files))  # the redelivered chunk
    progress, created, versions = _clean_run(redis_url, files)
    assert job.status == "succeeded" and job.progress == progress
    assert sorted(job.result["created"]) == created and job.result["existing"] == []
    assert h.ids(name) == set(created) == h.vector_ids(name)  # none lost, none in two shards
    # Each shard holds one add per image: the same versions (and log entries) as one clean run.
    assert [int(h.client.hget(keys.shard(name, s), "version") or 0) for s in range(SHARDS)] == versions
    assert [h.client.xlen(keys.log(name, s)) for s in range(SHARDS)] == versions


def test_a_chunk_killed_after_its_shard_writes_before_its_outcomes(
    h: Harness, name: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = photos(200, 24)
    job_id = h.submit(name, files)
    with monkeypatch.context() as m:
        _killing(m, h.jobs, "record_items", after=0)
        with pytest.raises(Killed):
            h.run_index(job_id, len(files))
    assert h.jobs.get(job_id).progress.done == 0 and len(h.ids(name)) == 24  # stored, not recorded
    job = h.run_index(job_id, len(files))
    progress, created, _ = _clean_run(redis_url, files)
    assert job.status == "succeeded" and job.progress == progress
    assert sorted(job.result["created"]) == created  # its own adds, found stored: created, once


def test_a_chunk_redelivered_after_its_outcomes_changes_nothing(h: Harness, name: str) -> None:
    files = photos(300, 24)
    job_id = h.submit(name, files)
    first = h.run_index(job_id, len(files))
    before = (_state(h, name), h.client.hgetall(keys.job(job_id)), h.client.hgetall(keys.job_items(job_id)))
    again = h.run_index(job_id, len(files))
    after = (_state(h, name), h.client.hgetall(keys.job(job_id)), h.client.hgetall(keys.job_items(job_id)))
    assert after == before and again.progress == first.progress


def test_a_delete_between_two_shard_writes_wins_in_its_shard(
    h: Harness, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk has written shard A; an image of a shard not yet written is deleted (its
    sequence number is above the job's): its shard's add skips it and reports it deleted."""
    files = photos(400, 24)
    job_id = h.submit(name, files)
    by_shard: dict[int, list[str]] = {}
    for _, data in files:
        by_shard.setdefault(shard_of(content_id(data), SHARDS), []).append(content_id(data))
    real, written, deleted = ops.add_images, [], []

    def add(collection, shard, *args, **kwargs):
        if len(written) == 1:  # one shard written, this one not yet
            victim = by_shard[shard][0]
            assert h.delete(name, victim) is False  # not stored yet: nothing to delete, but it wins
            deleted.append(victim)
        written.append(shard)
        return real(collection, shard, *args, **kwargs)

    monkeypatch.setattr(ops, "add_images", add)
    job = h.run_index(job_id, len(files))
    assert job.status == "succeeded" and job.result["deleted"] == deleted
    assert h.ids(name) == {content_id(d) for _, d in files} - set(deleted)


@pytest.fixture
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    # Not the session's Redis: its workers' webhook dispatchers would claim the callback.
    service, url = start_redis(tmp_path_factory.mktemp("shard-steps"))
    yield Harness(url, PixelEmbedder())
    service.stop()


def test_a_finisher_killed_before_the_deployment_wide_steps_is_put_right(
    private: Harness, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's end is in its record; the owner's open set, the webhooks due and the open jobs
    were not written (the finisher died): the watchdog finds it finished and open, and does them."""
    h = private
    job_id = uuid.uuid4().hex
    params = {"collection": name, "owner": "alice", "callback_url": "https://example.com/hook"}
    h.jobs.create(job_id, JobType.index, name, params, [JobInput(filename="a", image_id="", size=0)])
    assert h.client.zscore(keys.owner_open("alice"), job_id) is not None
    with monkeypatch.context() as m:
        _killing(m, JobLifecycle, "after_finish", after=0)
        with pytest.raises(Killed):
            h.jobs.finish(job_id, JobStatus.succeeded, {})
    assert h.jobs.get(job_id).status == JobStatus.succeeded
    assert h.client.zscore(keys.OPEN_JOBS, job_id) is not None  # still open: the watchdog's cue
    assert h.client.zscore(keys.WEBHOOKS_DUE, job_id) is None
    policy = watchdog.WatchdogPolicy(stall_s=0)
    watchdog.sweep(h.client, h.jobs, lambda *a: None, policy, now=time.time() + 1)
    assert h.client.zscore(keys.OPEN_JOBS, job_id) is None
    assert h.client.zscore(keys.owner_open("alice"), job_id) is None
    assert h.client.zscore(keys.WEBHOOKS_DUE, job_id) is not None  # its callback is not lost


def test_a_finisher_run_again_does_the_deployment_wide_steps(
    private: Harness, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same death, then the finisher runs again (a redelivered chunk) before any watchdog: it
    loses the race for the status, but still does what the first one did not."""
    h = private
    job_id = uuid.uuid4().hex
    params = {"collection": name, "owner": "bob", "callback_url": "https://example.com/hook"}
    h.jobs.create(job_id, JobType.index, name, params, [JobInput(filename="a", image_id="", size=0)])
    with monkeypatch.context() as m:
        _killing(m, JobLifecycle, "after_finish", after=0)
        with pytest.raises(Killed):
            h.jobs.finish(job_id, JobStatus.succeeded, {})
    assert h.jobs.finish(job_id, JobStatus.failed, {}) is False  # the first status stays
    assert h.jobs.get(job_id).status == JobStatus.succeeded
    assert h.client.zscore(keys.OPEN_JOBS, job_id) is None
    assert h.client.zscore(keys.owner_open("bob"), job_id) is None
    assert h.client.zscore(keys.WEBHOOKS_DUE, job_id) is not None


def test_a_one_item_job_killed_at_its_end_is_counted_once_and_put_right(
    private: Harness, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search's end: its item recorded, then the job finished, its counter sent with the last
    step. Killed before the deployment-wide steps, it is still counted done and finished; the rerun
    loses the status race, counts nothing twice, and closes the job."""
    h = private
    job_id = uuid.uuid4().hex
    h.jobs.create(job_id, JobType.search, name, {"k": 3}, [])
    counted = f"search:{JobStatus.succeeded.value}"
    before = int(h.client.hget(keys.JOB_COUNTS, counted) or 0)
    outcome = (ItemOutcome(index=0, filename="q.jpg", image_id="", status=ItemStatus.created), None)
    with monkeypatch.context() as m:
        _killing(m, JobLifecycle, "after_finish", after=0)
        with pytest.raises(Killed):
            h.jobs.record_items(job_id, [outcome])
            h.jobs.finish(job_id, JobStatus.succeeded, {"matches": []})
    job = h.jobs.get(job_id)
    assert job.status == JobStatus.succeeded and job.progress.done == 1 and job.result == {"matches": []}
    assert h.client.zscore(keys.OPEN_JOBS, job_id) is not None  # the killed end left it open
    h.jobs.record_items(job_id, [outcome])  # redelivered: the item is not counted twice
    assert h.jobs.finish(job_id, JobStatus.failed, {}) is False  # and the status stays
    job = h.jobs.get(job_id)
    assert job.status == JobStatus.succeeded and job.progress.done == 1 and job.progress.failed == 0
    assert h.client.zscore(keys.OPEN_JOBS, job_id) is None
    # The killed winner's count was lost with it (as before), and the rerun did not count again.
    assert int(h.client.hget(keys.JOB_COUNTS, counted) or 0) == before
    other = uuid.uuid4().hex
    h.jobs.create(other, JobType.search, name, {"k": 3}, [])
    h.jobs.record_items(other, [outcome])
    assert h.jobs.finish(other, JobStatus.succeeded, {"matches": []}) is True
    assert int(h.client.hget(keys.JOB_COUNTS, counted)) == before + 1
    assert h.client.zscore(keys.OPEN_JOBS, other) is None and h.jobs.get(other).progress.done == 1


def test_a_collection_created_by_a_killed_chunk_is_listed_by_its_rerun(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No PUT first: the chunk's images create the collection. Killed after every shard write but
    before the collection is listed, the rerun finds its images stored (0) and lists it all the same."""
    h, name = Harness(redis_url, PixelEmbedder()), f"steps-{uuid.uuid4().hex[:8]}"
    files = photos(500, 6)
    job_id = h.submit(name, files)
    with monkeypatch.context() as m:
        _killing(m, ops, "list_collection", after=0)
        with pytest.raises(Killed):
            h.run_index(job_id, len(files))
    assert name not in h.store.data.run(ops.names())
    assert h.run_index(job_id, len(files)).status == "succeeded"
    assert name in h.store.data.run(ops.names()) and h.store.data.run(ops.listed(name))[1] == 6


def test_a_swap_killed_between_two_shards_rolls_forward(h: Harness, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-embed's finisher dies after 2 of 4 shards swapped. Shards cannot swap back, so the
    abort that follows is refused (a cancel would be too), and the rerun finishes the swap: every
    shard and the header end on the new embedding, nothing staged is left."""
    from shared.runner import ScriptCall
    from shared.settings import embedding_id

    old, new = h.embedder, PixelEmbedder(input_size=40)
    h.index(name, photos(600, 24))
    job_id = h.begin_reembed(name, embedding_id(new.name, new.input_size))
    real, swaps = h.store.data._execute, [0]

    def dies_at_the_third_shard(batch):
        call = batch.calls[0]
        if isinstance(call, ScriptCall) and call.name == "swap_vectors" and call.args[5] == "1":
            swaps[0] += 1
            if swaps[0] == 3:
                raise Killed("killed between two shard swaps")
        return real(batch)

    monkeypatch.setattr(h.store.data, "_execute", dies_at_the_third_shard)
    with pytest.raises(Killed):
        h.run_reembed(job_id, new)
    monkeypatch.setattr(h.store.data, "_execute", real)
    embeddings = [h.client.hget(keys.shard(name, s), "embedding") for s in range(SHARDS)]
    assert embeddings.count(b"resnet50@40") == 2  # half swapped ...
    assert h.store.abort_reembed(name, job_id) == -1  # ... and it cannot be abandoned so
    job = h.run_reembed(job_id, new)  # the redelivered last chunk runs the finisher again
    assert job.status == "succeeded", (job.result, job.errors)
    header = h.client.hgetall(keys.collection(name))
    assert header[b"embedding"] == b"resnet50@40" and b"reembed_job" not in header
    assert [h.client.hget(keys.shard(name, s), "embedding") for s in range(SHARDS)] == [b"resnet50@40"] * SHARDS
    assert not any(h.client.exists(keys.staged_vectors(name, s)) for s in range(SHARDS))
    assert len(h.vector_ids(name)) == 24 and old.input_size != new.input_size


def test_a_model_mismatch_at_a_later_shard_keeps_what_earlier_shards_stored(h: Harness, name: str) -> None:
    """Shard 1 holds another model's vectors (a rolling model switch): the chunk's items fail with
    model_mismatch, but images its earlier shards stored keep their renditions (none is left
    naming a deleted blob)."""
    h.client.hset(keys.shard(name, 1), mapping={"model": "other", "dim": 8, "embedding": "other@8"})
    h.client.hset(keys.images(name, 1), "f" * 32, "{}")  # one image of the other model
    job = h.index(name, photos(700, 24))
    assert {e.error for e in job.errors} == {"model_mismatch"}
    stored = h.ids(name) - {"f" * 32}
    assert stored and all(shard_of(i, SHARDS) != 1 for i in stored)
    assert all(h.rendition(name, i) is not None for i in stored)
