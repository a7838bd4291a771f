"""Interleavings forced on purpose, against a real Redis: a delete racing a queued or running add,
adds racing a re-embed, a replica that falls behind a trimmed log, an unreadable item record.
The worker's job functions run in this process so the interleaving is exact (see inprocess.py)."""

from __future__ import annotations

import json
import uuid

import pytest

from shared import keys, vectors
from shared.imaging import content_id, prepare_image
from shared.settings import embedding_id
from tests.images import photo_bytes
from tests.integration.inprocess import Harness, PixelEmbedder


@pytest.fixture
def name() -> str:
    return f"race-{uuid.uuid4().hex[:8]}"


def photos(first: int, count: int) -> list[tuple[str, bytes]]:
    return [(f"p{first + i}.jpg", photo_bytes(first + i, size=(64, 48))) for i in range(count)]


def test_a_delete_wins_over_an_add_queued_before_it(redis_url: str, name: str) -> None:
    h = Harness(redis_url, PixelEmbedder())
    (a,) = photos(100, 1)
    b, c = photos(200, 2)
    assert h.index(name, [a]).status == "succeeded"
    queued = h.submit(name, [a, b])  # holds a, which is deleted before the job runs
    assert h.delete(name, content_id(a[1]))
    job = h.run_index(queued, 2)
    assert job.status == "succeeded"
    assert job.result["deleted"] == [content_id(a[1])] and job.result["created"] == [content_id(b[1])]
    assert h.ids(name) == {content_id(b[1])}
    # A job created after the delete adds the image again.
    again = h.index(name, [a, c])
    assert again.result["created"] == [content_id(a[1]), content_id(c[1])]
    assert h.ids(name) == {content_id(x[1]) for x in (a, b, c)}


def test_a_delete_during_a_chunk_is_reported_as_deleted_not_existing(redis_url: str, name: str) -> None:
    """The chunk finds `a` already stored, then `a` is deleted while the chunk embeds `d`."""
    (a,) = photos(300, 1)
    (d,) = photos(400, 1)
    h = Harness(redis_url, PixelEmbedder())
    h.index(name, [a])
    racing = PixelEmbedder(before_embed=lambda: h.delete(name, content_id(a[1])))
    job = h.index(name, [a, d], embedder=racing)
    assert racing.calls == 1
    assert job.result["existing"] == [] and job.result["deleted"] == [content_id(a[1])]
    assert job.result["created"] == [content_id(d[1])]
    # The job's report agrees with what the collection holds.
    assert h.ids(name) == set(job.result["created"]) == h.vector_ids(name)


def test_reembed_keeps_images_added_while_it_runs(redis_url: str, name: str) -> None:
    """40 images, then a re-embed and 64 more images at once (the adds land after the re-embed
    took its list): nothing is dropped, every image ends up with the final model's vector."""
    embedder = PixelEmbedder()
    h = Harness(redis_url, embedder)
    first, later = photos(1000, 40), photos(2000, 64)
    h.index(name, first)
    job_id = h.begin_reembed(name, embedding_id(embedder.name, embedder.input_size))
    assert h.index(name, later).result["created"] == [content_id(x[1]) for x in later]
    job = h.run_reembed(job_id, embedder)
    assert job.status == "succeeded", job.errors
    assert job.result["dropped"] == [] and job.result["reembedded"] == 40
    assert h.ids(name) == h.vector_ids(name) == {content_id(x[1]) for x in first + later}
    assert h.client.hget(keys.collection(name), "reembed_job") is None


def test_reembed_after_an_input_size_change_reembeds_stragglers(redis_url: str, name: str) -> None:
    """Same model name, new INPUT_SIZE: images added meanwhile by a worker still on the old size
    are re-embedded before the swap, so every final vector is the new size's."""
    old, new = PixelEmbedder(input_size=32), PixelEmbedder(input_size=40)
    h = Harness(redis_url, old)
    h.index(name, photos(3000, 40))
    job_id = h.begin_reembed(name, embedding_id(new.name, new.input_size))
    h.index(name, photos(4000, 30), embedder=old)  # a worker not yet restarted
    job = h.run_reembed(job_id, new)
    assert job.status == "succeeded", job.errors
    assert job.result["dropped"] == [] and job.result["added_during"] == 30
    assert len(h.ids(name)) == 70 == len(h.vector_ids(name))
    info = h.client.hgetall(keys.collection(name))
    assert info[b"embedding"].decode() == "resnet50@40"
    for image_id, raw in h.client.hgetall(keys.vectors(name, 0)).items():
        rendition = h.rendition(name, image_id.decode())
        expected = new.embed(prepare_image(rendition, new.input_size).pixels[None])[0]
        assert float(vectors.decode(raw, new.dim) @ expected) > 0.9999


def test_reembed_drops_only_images_whose_reembed_failed(redis_url: str, name: str) -> None:
    embedder = PixelEmbedder()
    h = Harness(redis_url, embedder)
    files = photos(5000, 10)
    h.index(name, files)
    broken = content_id(files[3][1])
    h.set_rendition(name, broken, b"not a jpeg any more")
    job = h.run_reembed(h.begin_reembed(name, embedding_id(embedder.name, embedder.input_size)), embedder)
    assert job.status == "partial" and job.result["dropped"] == [broken]
    assert h.ids(name) == {content_id(x[1]) for x in files} - {broken}


def test_a_replica_behind_a_trimmed_log_rebuilds(redis_url: str, name: str) -> None:
    """The log is capped at 5 entries (Redis trims whole nodes of 100). A replica that slept
    through a delete and 300 adds must not keep the deleted image nor miss the new ones."""
    h = Harness(redis_url, PixelEmbedder(), log_maxlen=5)
    first = photos(6000, 20)
    h.index(name, first)
    replica = h.replicas.sync(name)
    assert len(replica.index) == 20 and h.replicas.rebuilds == 1
    gone = content_id(first[0][1])
    assert h.delete(name, gone)
    h.index(name, photos(7000, 300))
    log = h.client.xrange(keys.log(name, 0))
    assert len(log) < 300 and not any(fields[b"op"] == b"del" for _, fields in log)  # the delete was trimmed
    # What the old check relied on: MAXLEN trimming never sets max-deleted-entry-id.
    assert h.client.xinfo_stream(keys.log(name, 0))["max-deleted-entry-id"] in (b"0-0", "0-0")
    replica = h.replicas.sync(name)
    assert h.replicas.rebuilds == 2
    assert set(replica.index.ids) == h.vector_ids(name) and gone not in replica.index
    assert len(replica.index) == 319
    # Caught up again, the next change is applied from the log, without another rebuild.
    h.delete(name, content_id(first[1][1]))
    assert len(h.replicas.sync(name).index) == 318 and h.replicas.rebuilds == 2


def test_an_unreadable_item_record_fails_that_item_only(redis_url: str, name: str) -> None:
    """Metadata nested ~210 levels deep cannot be read back by the worker's JSON parser: that item
    fails with a reason, the other item of the batch is indexed and the job ends."""
    h = Harness(redis_url, PixelEmbedder())
    files = photos(8000, 2)
    job_id = h.submit(name, files)
    nested: dict = {}
    for _ in range(210):
        nested = {"a": nested}
    raw = json.loads(h.client.hget(keys.job_inputs(job_id), "0"))
    raw["metadata"] = nested
    h.client.hset(keys.job_inputs(job_id), "0", json.dumps(raw))
    job = h.run_index(job_id, 2)
    assert job.status == "partial"
    assert [e.error for e in job.errors] == ["invalid_input"] and job.errors[0].index == 0
    assert h.ids(name) == {content_id(files[1][1])}


def test_job_statuses_reach_lua_as_arguments(redis_url: str) -> None:
    """Finishing twice keeps the first status (the script gets the final statuses as arguments)."""
    h = Harness(redis_url, PixelEmbedder())
    job_id = h.submit("x-" + uuid.uuid4().hex[:6], photos(9000, 1))
    from shared.schemas import JobStatus

    assert h.jobs.mark_running(job_id) and not h.jobs.mark_running(job_id)
    assert h.jobs.finish(job_id, JobStatus.partial, {})
    assert not h.jobs.finish(job_id, JobStatus.succeeded, {})
    assert h.jobs.get(job_id).status == "partial"


def test_reembed_chunks_failed_elsewhere_are_recovered_not_dropped(redis_url: str, name: str) -> None:
    """Half the chunks run on a worker with another embedding (a rolling deploy): their items fail,
    but the finisher (on a matching worker) embeds them before the swap; nothing is deleted."""
    target, other = PixelEmbedder(input_size=40), PixelEmbedder(input_size=48)
    h = Harness(redis_url, PixelEmbedder(input_size=32))
    files = photos(10000, 8)
    h.index(name, files)
    job_id = h.begin_reembed(name, embedding_id(target.name, target.input_size))
    ctx_other, ctx_target = h.context(job_id, other), h.context(job_id, target)
    from worker.ingest import reembedding

    reembedding.reembed_chunk(ctx_other, [0, 1, 2, 3])
    reembedding.reembed_chunk(ctx_target, [4, 5, 6, 7])
    job = h.jobs.get(job_id)
    assert job.progress.failed == 4 and {e.error for e in job.errors} == {"model_mismatch"}
    assert job.status == "succeeded" and job.result["dropped"] == [] and job.result["added_during"] == 4
    assert h.ids(name) == h.vector_ids(name) == {content_id(x[1]) for x in files}
    assert h.client.hget(keys.collection(name), "embedding") == b"resnet50@40"


def test_a_finisher_with_the_wrong_embedding_gives_up_without_damage(redis_url: str, name: str) -> None:
    target, old = PixelEmbedder(input_size=40), PixelEmbedder(input_size=32)
    h = Harness(redis_url, old)
    files = photos(11000, 8)
    h.index(name, files)
    before = h.client.hgetall(keys.vectors(name, 0))
    job_id = h.begin_reembed(name, embedding_id(target.name, target.input_size))
    from worker.ingest import reembedding

    reembedding.reembed_chunk(h.context(job_id, target), [0, 1, 2, 3])
    reembedding.reembed_chunk(h.context(job_id, old), [4, 5, 6, 7])  # ends the job, on the old worker
    job = h.jobs.get(job_id)
    assert job.status == "failed" and job.result["error"] == "wrong_embedding"
    assert h.client.hgetall(keys.vectors(name, 0)) == before  # old vectors, whole, consistent
    assert h.client.hget(keys.collection(name), "reembed_job") is None
    assert not h.client.exists(keys.staged_vectors(name, 0))


def test_a_finisher_redelivered_after_its_swap_reports_success(redis_url: str, name: str) -> None:
    """The worker died between the swap and recording the job's end: the redelivered last chunk
    must report the swap it made, not 'superseded', and leave no staged vectors behind."""
    embedder = PixelEmbedder()
    h = Harness(redis_url, embedder)
    h.index(name, photos(12000, 5))
    job_id = h.begin_reembed(name, embedding_id(embedder.name, embedder.input_size))
    from worker.ingest import reembedding

    ctx = h.context(job_id)
    reembedding.reembed_chunk(ctx, [0, 1, 2, 3, 4])
    h.client.hset(keys.job(job_id), mapping={"status": "running"})  # as if `finish` never ran
    h.client.hdel(keys.job(job_id), "result")
    reembedding.reembed_chunk(ctx, [0, 1, 2, 3, 4])  # the redelivery
    job = h.jobs.get(job_id)
    assert job.status == "succeeded" and job.result["dropped"] == []
    assert not h.client.exists(keys.staged_vectors(name, 0))


def test_a_finisher_that_raises_releases_the_collection(redis_url: str, name: str) -> None:
    embedder = PixelEmbedder()
    h = Harness(redis_url, embedder)
    h.index(name, photos(13000, 4))
    job_id = h.begin_reembed(name, embedding_id(embedder.name, embedder.input_size))
    h.index(name, photos(13100, 1), embedder=PixelEmbedder(input_size=48))  # a straggler to embed

    def boom() -> None:
        raise RuntimeError("model crashed")

    from worker.ingest import reembedding

    reembedding.reembed_chunk(h.context(job_id), [0, 1, 2])
    with pytest.raises(RuntimeError, match="model crashed"):  # the last chunk, then its finisher, fail
        reembedding.reembed_chunk(h.context(job_id, PixelEmbedder(before_embed=boom)), [3])
    assert h.client.hget(keys.collection(name), "reembed_job") is None
    assert not h.client.exists(keys.staged_vectors(name, 0))
    assert len(h.ids(name)) == 5 == len(h.vector_ids(name))


def test_a_delete_before_the_add_ran_cancels_the_queued_add(redis_url: str, name: str) -> None:
    h = Harness(redis_url, PixelEmbedder())
    (a, first) = photos(14000, 2)
    h.index(name, [first])  # the collection exists (a delete in an unknown collection leaves nothing)
    queued = h.submit(name, [a])
    assert not h.delete(name, content_id(a[1]))  # not stored yet: 404, but it wins all the same
    job = h.run_index(queued, 1)
    assert job.result["deleted"] == [content_id(a[1])] and h.ids(name) == {content_id(first[1])}


def test_two_reembeds_cannot_start_together(redis_url: str, name: str) -> None:
    embedder = PixelEmbedder()
    h = Harness(redis_url, embedder)
    h.index(name, photos(15000, 3))
    first = h.begin_reembed(name, embedding_id(embedder.name, embedder.input_size))
    with pytest.raises(AssertionError):  # begin_reembed returned the running job's id, not ids
        h.begin_reembed(name, embedding_id(embedder.name, embedder.input_size))
    assert h.client.hget(keys.collection(name), "reembed_job").decode() == first


def test_deletes_in_unknown_collections_leave_no_keys(redis_url: str, name: str) -> None:
    h = Harness(redis_url, PixelEmbedder())
    for i in range(50):
        assert not h.delete(name, f"{i:032x}")
    assert list(h.client.scan_iter(f"ss:c:{name}*")) == []
