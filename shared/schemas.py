"""Pydantic models for what crosses a boundary: Redis records, HTTP bodies, job results."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IMAGE_ID = re.compile(r"^[0-9a-f]{32}$")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobType(StrEnum):
    index = "index"
    search = "search"
    reembed = "reembed"
    cluster = "cluster"
    duplicates = "duplicates"
    batch_search = "batch_search"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    partial = "partial"
    failed = "failed"

    @property
    def final(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.partial, JobStatus.failed)


class ItemStatus(StrEnum):
    created = "created"
    existing = "existing"
    skipped = "skipped"  # re-embed: the image was deleted while the job ran
    deleted = "deleted"  # index: a delete that came after this job was queued wins over its add
    failed = "failed"


class ItemError(BaseModel):
    index: int | None = None
    filename: str | None = None
    image_id: str | None = None
    error: str
    detail: str


class JobInput(BaseModel):
    """One item of an index job: an uploaded file (its bytes in an upload blob), or a URL the
    worker fetches (http(s), or s3:// for a bucket import); then image_id is "" until fetched."""

    filename: str
    image_id: str
    size: int
    url: str | None = None
    stored: bool = False  # a batch search's query that is an image of the collection (image_id)
    metadata: dict[str, Any] | None = None
    # Set when the API already rejected the item (e.g. over the per-file size limit): the worker
    # records the failure without touching the bytes.
    rejected: ItemError | None = None

    @field_validator("filename")
    @classmethod
    def _text(cls, value: str) -> str:
        """A name as valid text: bytes that were not UTF-8 (kept as surrogates by tarfile and
        os.fsdecode) become U+FFFD, so every input serialises (one that did not stranded a job)."""
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that stands for no byte
            raw = value.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "replace")


class ItemOutcome(BaseModel):
    index: int
    filename: str
    image_id: str
    status: ItemStatus


class Progress(BaseModel):
    total: int
    done: int = Field(description="items processed so far, failed ones included")
    failed: int


class CallbackStatus(StrEnum):
    """Where a job's completion callback stands (see `CallbackState`)."""

    # Stored as the job hash's `callback_status`: FINISH_JOB (shared/jobs/scripts.py) sets
    # `pending`, worker/upkeep/webhooks.py settles it; no field yet reads as `waiting`.
    waiting = "waiting"
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class CallbackState(BaseModel):
    """A job's completion callback: `waiting` until the job ends, then `pending` (being tried),
    `delivered` (a 2xx answer) or `failed` (gave up; `last_error` says why)."""

    url: str
    status: CallbackStatus = CallbackStatus.waiting
    attempts: int = 0
    last_error: str | None = None
    delivered_at: str | None = None


class JobView(BaseModel):
    job_id: str
    type: JobType
    status: JobStatus
    collection: str
    progress: Progress
    result: dict[str, Any] | None = None
    errors: list[ItemError] = []
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    callback: CallbackState | None = None


class ImageRecord(BaseModel):
    image_id: str
    filename: str
    format: str
    width: int
    height: int
    size: int
    metadata: dict[str, Any] | None = None
    created_at: str
    # The index job that added it; also names its rendition in the blob store (None: indexed
    # before renditions moved out of Redis).
    job_id: str | None = None


class Match(BaseModel):
    image_id: str
    filename: str
    similarity: float


class Example(BaseModel):
    """One example of a multi-example query: a stored image or an image URL, weighted."""

    model_config = ConfigDict(extra="forbid")
    image_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    url: str | None = Field(None, max_length=2048)
    weight: float = Field(1.0, gt=0, le=100)

    @model_validator(mode="after")
    def _one_source(self) -> Example:
        if (self.image_id is None) == (self.url is None):
            raise ValueError("an example is an image_id or a url")
        return self


class SearchParams(BaseModel):
    k: int = Field(default=10, ge=1, le=1000)
    min_similarity: float | None = Field(default=None, ge=-1.0, le=1.0)
    image_id: str | None = None  # search by a stored image instead of an upload
    url: str | None = None  # search by an image the worker fetches (shared/fetch.py rules)
    # "More like these, less like those": normalise(mean_w(positive) - 0.5 * mean_w(negative)).
    positive: list[Example] | None = None
    negative: list[Example] | None = None
    filename: str | None = None  # of the uploaded query, for the record
    cluster: int | None = Field(default=None, ge=0)  # restrict matches to this cluster
    filter: dict[str, Any] | None = None  # a metadata filter (shared/filters.py), validated by the API


class Threshold(BaseModel):
    """The similarity a match had to reach, and where that number came from: the request's
    `min_similarity`, the collection's calibration (worker/search/calibration.py), or the model's floor."""

    value: float
    source: Literal["request", "collection", "model"]
    sample: int | None = None  # calibrated: how many nearest-neighbour similarities it came from


class SearchResult(BaseModel):
    matches: list[Match]
    message: str | None = None
    threshold: Threshold | None = None  # None: no threshold applied (min_similarity=0, examples)
    closest: float | None = None  # no match reached the threshold: the best similarity there was
    collection_size: int
    model: str
    served_by: str | None = None  # the Celery worker that answered
    query_cluster: int | None = None  # the cluster whose centroid is nearest the query
    filter_matches: int | None = None  # with a filter or cluster: how many images could match
    shards: int | None = None  # a sharded collection: how many shards were asked
    missing_shards: list[int] | None = None  # ... and which did not answer in time (status partial)


class CollectionInfo(BaseModel):
    name: str
    image_count: int
    model: str | None = None
    dimension: int | None = None
    created_at: str | None = None
    shards: int = 1
    shard_counts: list[int] = Field(default_factory=list)  # images per shard, shard 0 first


class JobAccepted(BaseModel):
    job_id: str
    status_url: str
    total: int | None = None


def rendition_key(collection: str, record: ImageRecord) -> str | None:
    from shared.keys import rendition_blob

    return rendition_blob(collection, record.image_id, record.job_id) if record.job_id else None
