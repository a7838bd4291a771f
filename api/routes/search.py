from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.datastructures import FormData

from api import paths
from api.auth import principal_of
from api.bodies import checked_filter, form_filter, parse_body, searchable
from api.deps import CallbackUrl, CollectionName, MinSimilarity, RenderedDep, StoreDep, TopK, WaiterDep
from api.jobs_submit import JobSubmitter, Submitter
from api.limits import media_type
from api.longpoll import until_final
from api.store import Upload
from api.uploads import files_of, read_form
from api.urls import MAX_URL_LENGTH, valid_url
from shared.errors import InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMedia
from shared.imaging import content_id, safe_filename, sniff_format
from shared.jobs.kinds import KINDS
from shared.schemas import IMAGE_ID, Example, JobAccepted, JobInput, JobType, JobView, SearchParams

router = APIRouter(prefix=paths.SEARCH, tags=["search"], dependencies=[Depends(principal_of)])


MAX_EXAMPLES = 100


class SearchById(BaseModel):
    """A stored image (`image_id`), an image a worker fetches (`url`), or examples (`positive`,
    optionally `negative`: stored ids or URLs, weighted): exactly one kind."""

    model_config = ConfigDict(extra="forbid")
    image_id: str | None = Field(None, pattern=IMAGE_ID.pattern)
    url: str | None = Field(None, max_length=MAX_URL_LENGTH)
    positive: list[Example] | None = Field(None, min_length=1, max_length=MAX_EXAMPLES)
    negative: list[Example] | None = Field(None, max_length=MAX_EXAMPLES)
    filter: dict[str, Any] | None = Field(None, description="only matches whose metadata passes it")

    @model_validator(mode="after")
    def _one_query(self) -> SearchById:
        if sum(x is not None for x in (self.image_id, self.url, self.positive)) != 1:
            raise ValueError("give exactly one of image_id, url and positive")
        if self.negative is not None and self.positive is None:
            raise ValueError("negative examples need positive ones")
        return self


async def _check_examples(store: StoreDep, collection: str, examples: list[Example]) -> None:
    for e in examples:
        if e.url is not None:
            valid_url(e.url)
    ids = [e.image_id for e in examples if e.image_id is not None]
    missing = sorted(set(ids) - set(await store.existing(collection, ids))) if ids else []
    if missing:
        raise NotFound(f"not in collection {collection!r}: {', '.join(missing[:10])}", code="image_not_found")


SEARCH_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "filter": {"type": "string", "description": "a metadata filter, as JSON"},
                    },
                }
            },
            "application/json": {"schema": SearchById.model_json_schema()},
        },
        "required": True,
    }
}


async def _query_upload(form: FormData, settings) -> Upload:
    files = files_of(form, "file")
    if len(files) != 1:
        raise InvalidRequest("send exactly one query image in a 'file' part", code="no_file")
    data = await files[0].read()
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge(f"query image is over {settings.max_image_bytes} bytes")
    # 400 now for a non-image, not a failed job later; in a thread: a crafted header (e.g. PNG text
    # chunks to inflate) must not stall the event loop.
    await anyio.to_thread.run_sync(sniff_format, data, settings.max_image_pixels)
    name = safe_filename(files[0].filename)
    return Upload(JobInput(filename=name, image_id=content_id(data), size=len(data)), data)


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    openapi_extra=SEARCH_DOC,
    responses={200: {"model": JobView, "description": "with `wait`: the job, finished within it"}},
)
async def search(
    collection: CollectionName,
    request: Request,
    jobs: Submitter,
    waiter: WaiterDep,
    rendered: RenderedDep,
    k: TopK = 10,
    min_similarity: MinSimilarity = None,
    cluster: int | None = Query(None, ge=0, description="only matches from this cluster"),
    callback_url: CallbackUrl = None,
    wait: float = Query(
        0, ge=0, le=30, description="seconds to wait for the answer: 200 with the finished job, else 202 as without"
    ),
) -> JobAccepted | Response:
    """Find the k images most similar to an uploaded image, or to a stored one (`{"image_id"}`).
    A `filter` (JSON body field, or form field next to the upload) keeps only matches whose
    metadata passes it: `{"label": "cat"}`, `{"year": {"$gte": 2020}}`, `$in`, `$exists`, `$or`...
    With `wait`, the answer comes in this request when the search ends within it (one round trip
    instead of a POST and a `GET /v1/jobs/{id}?wait=`)."""
    store, settings = jobs.store, jobs.settings
    info = await searchable(store, collection, settings, k)
    content_type = media_type(request.headers.get("content-type"))
    if cluster is not None:
        clustering = await store.clustering(collection)
        if clustering is None or cluster >= clustering["k"]:
            raise NotFound(f"collection {collection!r} has no cluster {cluster}", code="cluster_not_found")
    params = SearchParams(k=k, min_similarity=min_similarity, cluster=cluster)
    uploads: list[Upload] = []
    if content_type == "application/json":
        body = parse_body(SearchById, await request.body())
        params.filter = checked_filter(body.filter)
        if body.positive is not None:
            examples = [*body.positive, *(body.negative or [])]
            await _check_examples(store, collection, examples)
            params.positive, params.negative = body.positive, body.negative
        elif body.url is not None:
            params.url = params.filename = valid_url(body.url)
        elif not await store.image_exists(collection, body.image_id, info.shards):
            raise NotFound(f"no image {body.image_id} in collection {collection!r}", code="image_not_found")
        else:
            params.image_id = body.image_id
    elif content_type == "multipart/form-data":
        form = await read_form(request, settings)
        params.filter = form_filter(form)
        upload = await _query_upload(form, settings)
        params.filename = upload.input.filename
        uploads.append(upload)
    else:
        raise UnsupportedMedia('send the query as multipart \'file\' or as JSON {"image_id"} or {"url"}')
    job = jobs.new(collection, params.model_dump(mode="json"))
    job.call_back(callback_url)
    await job.create(JobType.search, uploads)
    deadline = time.monotonic() + min(wait, settings.max_wait_seconds)
    # Watch before enqueueing: an answer faster than this request must not be missed.
    async with waiter.watch(job.job_id) if wait else contextlib.nullcontext() as event:
        await _enqueue(jobs, info.shards, collection, job.job_id, params)
        view = None
        if event is not None:
            view = await until_final(store, waiter, rendered, job.job_id, event, deadline, just_created=True)
    if view is not None and view.final:
        return Response(view.body, media_type="application/json")
    return job.accepted(total=1)


async def _enqueue(jobs: JobSubmitter, shards: int, collection: str, job_id: str, params: SearchParams) -> None:
    store, queue, settings = jobs.store, jobs.queue, jobs.settings
    # A sharded collection searched by a stored image: its vector is the query, so the shards are
    # asked at once (one hop, as an unsharded search; bench/shards.py measured the two-hop way,
    # through a dispatching worker, at 2.3x the unsharded p50). An uploaded query needs a worker
    # to embed it first.
    if shards > 1 and params.image_id is not None and await store.put_query(job_id, collection, params.image_id):
        await queue.send_fan_out(job_id, collection, shards, settings.shard_timeout_s)
    else:
        kind = KINDS[JobType.search]
        await queue.send(kind.task, [job_id, collection], kind.queue)
