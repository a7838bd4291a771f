"""The kinds of job, in one table: what each carries in its record's `params` (a typed model per
job type, and the sources a growing job expands: a union on `kind`) and the task that runs its
work. The API submits and the watchdog re-drives through it; workers read params back through
`JobRecord.params` and end jobs through `worker/finishers.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.queueing import (
    BATCH_CHUNK_TASK,
    CLUSTER_TASK,
    DUPLICATES_TASK,
    INDEX_CHUNK_TASK,
    INDEX_QUEUE,
    REEMBED_CHUNK_TASK,
    SEARCH_QUEUE,
    SEARCH_TASK,
)
from shared.schemas import JobType, SearchParams


class CollectionSource(BaseModel):
    """Every image of the collection as a query (a whole-collection batch search)."""

    kind: Literal["collection"] = "collection"
    # The images counted (and reserved against quotas) when the search was asked for: a collection
    # grown by then is answered for its first `limit` images listed. None: every image.
    limit: int | None = None


class BucketSource(BaseModel):
    kind: Literal["bucket"] = "bucket"
    url: str  # s3://bucket/prefix


class UrlListSource(BaseModel):
    kind: Literal["urls"] = "urls"
    filename: str = "urls"  # the uploaded list, kept as the job's source blob


class ArchiveSource(BaseModel):
    kind: Literal["archive"] = "archive"
    filename: str  # the archive's (sanitised) upload name


SourceSpec = Annotated[CollectionSource | BucketSource | UrlListSource | ArchiveSource, Field(discriminator="kind")]


def source_name(spec: SourceSpec) -> str:
    """How items that stand for the whole source are named (an expansion that failed)."""
    return getattr(spec, "filename", None) or getattr(spec, "url", None) or "(source)"


class JobParams(BaseModel):
    # Records written by an older release may carry fields since dropped: read, not refused.
    model_config = ConfigDict(extra="ignore")

    collection: str | None = None
    owner: str | None = None  # the requester whose quotas and priority the job counts against
    priority: int = 0  # the owner's open jobs when it was created (shared.queueing)
    callback_url: str | None = None
    sources: list[SourceSpec] = []

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)


class IndexParams(JobParams):
    pass


class SearchJobParams(SearchParams, JobParams):
    pass


class BatchSearchParams(JobParams):
    k: int = 10
    min_similarity: float | None = None
    filter: dict[str, Any] | None = None

    def search(self) -> SearchParams:
        return SearchParams(k=self.k, min_similarity=self.min_similarity, filter=self.filter)


class ClusterParams(JobParams):
    k: int | None = None
    k_min: int = 2
    k_max: int = 10


class DuplicatesParams(JobParams):
    min_similarity: float
    k: int
    max_groups: int


class ReembedParams(JobParams):
    model: str
    dim: int
    embedding: str | None = None


@dataclass(frozen=True)
class Kind:
    params: type[JobParams]
    task: str  # the task that runs a chunk of its items, or (single) the whole job
    queue: str
    chunked: bool  # items in chunks of INDEX_CHUNK_SIZE; else one task, one item


KINDS: dict[JobType, Kind] = {
    JobType.index: Kind(IndexParams, INDEX_CHUNK_TASK, INDEX_QUEUE, chunked=True),
    JobType.reembed: Kind(ReembedParams, REEMBED_CHUNK_TASK, INDEX_QUEUE, chunked=True),
    JobType.batch_search: Kind(BatchSearchParams, BATCH_CHUNK_TASK, INDEX_QUEUE, chunked=True),
    JobType.search: Kind(SearchJobParams, SEARCH_TASK, SEARCH_QUEUE, chunked=False),
    JobType.cluster: Kind(ClusterParams, CLUSTER_TASK, INDEX_QUEUE, chunked=False),
    JobType.duplicates: Kind(DuplicatesParams, DUPLICATES_TASK, INDEX_QUEUE, chunked=False),
}


def parse_params(job_type: JobType, raw: dict[str, Any]) -> JobParams:
    return KINDS[job_type].params.model_validate(raw)
