"""Batch search: one job, many queries (uploads, stored images, or every image of the collection),
answered a chunk at a time; results read a page at a time from `GET /v1/jobs/{id}/results`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api import paths
from api.auth import principal_of
from api.bodies import checked_filter, form_filter, parse_body, searchable
from api.deps import CallbackUrl, CollectionName, MinSimilarity, TopK
from api.jobs_submit import Submitter
from api.limits import media_type
from api.settings import ApiSettings
from api.store import Upload
from api.uploads import files_of, read_form, to_uploads
from shared.errors import InvalidRequest, SimsearchError, UnsupportedMedia
from shared.schemas import IMAGE_ID, JobAccepted, JobInput, JobType

router = APIRouter(prefix=paths.SEARCH_BATCH, tags=["search"], dependencies=[Depends(principal_of)])

MAX_IDS = 10_000


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_ids: list[str] | None = Field(None, min_length=1, max_length=MAX_IDS)
    all: bool = False
    filter: dict[str, Any] | None = None
    callback_url: str | None = None

    @model_validator(mode="after")
    def _one(self) -> BatchRequest:
        if (self.image_ids is not None) == self.all:
            raise ValueError('give "image_ids" or "all": true')
        if self.image_ids and (bad := [i for i in self.image_ids if not IMAGE_ID.fullmatch(i)]):
            raise ValueError(f"not image ids: {bad[:5]}")
        return self


@router.post("", status_code=202, response_model=JobAccepted)
async def search_batch(
    collection: CollectionName,
    request: Request,
    jobs: Submitter,
    k: TopK = 10,
    min_similarity: MinSimilarity = None,
    callback_url: CallbackUrl = None,
) -> JobAccepted:
    """Search with many queries in one job: uploaded `files` (up to 1,000), `{"image_ids": [...]}`,
    or `{"all": true}` (each image against the collection, itself excluded). Progress counts
    queries; `GET /v1/jobs/{id}/results?offset=&limit=` pages the answers (or `format=jsonl`)."""
    settings = jobs.settings
    info = await searchable(jobs.store, collection, settings, k)
    job = await jobs.admit(collection, {"k": k, "min_similarity": min_similarity})
    kind = media_type(request.headers.get("content-type"))
    if kind == "application/json":
        body = parse_body(BatchRequest, await request.body())
        job.call_back(body.callback_url or callback_url)
        job.params["filter"] = checked_filter(body.filter)
        if body.all:
            within_budget(k, info.image_count, settings)
            await job.take(info.image_count, matches=k * info.image_count)
            # The images counted now, not those the collection has grown to when a worker lists it.
            spec = {"kind": "collection", "limit": info.image_count}
            return await job.submit(JobType.batch_search, sources=[(spec, None)])
        ids = body.image_ids or []
        uploads = [Upload(JobInput(filename=i, image_id=i, size=0, stored=True), None) for i in ids]
    elif kind == "multipart/form-data":
        job.call_back(callback_url)
        form = await read_form(request, settings)
        job.params["filter"] = form_filter(form)
        files = files_of(form, "files")
        if not files:
            raise InvalidRequest("the form has no 'files' parts", code="no_files")
        uploads = await to_uploads(files, {}, settings)
    else:
        raise UnsupportedMedia('send query images as multipart "files", or JSON {"image_ids"} or {"all": true}')
    within_budget(k, len(uploads), settings)
    await job.take(len(uploads), matches=k * len(uploads))
    return await job.submit(JobType.batch_search, uploads)


def within_budget(k: int, queries: int, settings: ApiSettings) -> None:
    """Refuse a batch whose answers would outgrow MAX_BATCH_MATCHES (they stay in Redis for the job's life)."""
    if k * queries > settings.max_batch_matches:
        most = max(1, settings.max_batch_matches // max(1, queries))
        cap = settings.max_batch_matches
        detail = (
            f"k={k} for {queries} queries is {k * queries:,} matches, over MAX_BATCH_MATCHES={cap:,};"
            f" ask for k <= {most}, or fewer queries per batch"
        )
        raise SimsearchError(detail, code="batch_too_large", status_code=413)
