"""A batch search of a whole collection grows like an import: a worker lists the collection as the
job's source and queues chunks. Forced here on a real Redis: every chunk answered before the source
is marked done, so the source's end is what completes the job, which must then end as a batch
search (results and summary), not as an index job."""

from __future__ import annotations

import uuid

from shared.schemas import JobType
from tests.images import photo_bytes
from tests.integration.inprocess import Harness, PixelEmbedder
from worker.ingest import expanding
from worker.ingest.archives import ArchiveLimits
from worker.search import batch_search


def test_a_whole_collection_batch_ending_at_its_source_ends_as_a_batch_search(redis_url: str) -> None:
    h = Harness(redis_url, PixelEmbedder())
    collection = f"grow-{uuid.uuid4().hex[:8]}"
    h.index(collection, [(f"p{i}.jpg", photo_bytes(24000 + i, size=(32, 32))) for i in range(5)])
    job_id = uuid.uuid4().hex
    params = {"collection": collection, "k": 2, "min_similarity": None, "sources": [{"kind": "collection"}]}
    h.jobs.create(job_id, JobType.batch_search, collection, params, [], sources=1)

    def run_chunks_now(first: int, count: int) -> None:  # the chunks finish before the source ends
        batch_search.search_batch_chunk(h.context(job_id), list(range(first, first + count)))

    expanding.expand_source(h.context(job_id), 0, run_chunks_now, ArchiveLimits(), 16_384)
    job = h.jobs.get(job_id)
    assert job.status == "succeeded" and job.progress.total == 5 and job.progress.done == 5
    assert job.result == {"queries": 5, "failed": 0, "results_url": f"/v1/jobs/{job_id}/results"}


def test_a_whole_collection_batch_answers_the_images_counted_when_it_was_asked(redis_url: str) -> None:
    """The API counts (and reserves quotas for) the collection's images when the batch is asked
    for; images added before a worker lists it are not queries of that batch."""
    h = Harness(redis_url, PixelEmbedder())
    collection = f"grow-{uuid.uuid4().hex[:8]}"
    h.index(collection, [(f"q{i}.jpg", photo_bytes(24100 + i, size=(32, 32))) for i in range(3)])
    job_id = uuid.uuid4().hex
    spec = {"kind": "collection", "limit": 3}  # as the API writes it for a 3-image collection
    params = {"collection": collection, "k": 2, "min_similarity": None, "sources": [spec]}
    h.jobs.create(job_id, JobType.batch_search, collection, params, [], sources=1)
    h.index(collection, [(f"late{i}.jpg", photo_bytes(24200 + i, size=(32, 32))) for i in range(4)])  # grows to 7

    def run_chunks_now(first: int, count: int) -> None:
        batch_search.search_batch_chunk(h.context(job_id), list(range(first, first + count)))

    expanding.expand_source(h.context(job_id), 0, run_chunks_now, ArchiveLimits(), 16_384)
    job = h.jobs.get(job_id)
    assert job.status == "succeeded" and job.progress.total == 3 and job.progress.done == 3
