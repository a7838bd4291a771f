from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api import paths
from api.auth import Requester, principal_of
from api.bodies import text_filter
from api.compat import require_current_model
from api.deps import CallbackUrl, CollectionName, ImageId, StoreDep
from api.jobs_submit import Submitter
from api.uploads import files_of, parse_metadata, read_form, split_archives, to_uploads
from shared import filters
from shared.errors import InvalidRequest, NotFound
from shared.schemas import IMAGE_ID, ImageRecord, JobAccepted, JobType

log = logging.getLogger(__name__)
router = APIRouter(prefix=paths.IMAGES, tags=["images"], dependencies=[Depends(principal_of)])

UPLOAD_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "metadata": {"type": "string", "description": "JSON object: file name -> object"},
                    },
                }
            }
        },
        "required": True,
    }
}


@router.post("", status_code=202, response_model=JobAccepted, openapi_extra=UPLOAD_DOC)
async def index_images(
    collection: CollectionName, request: Request, jobs: Submitter, callback_url: CallbackUrl = None
) -> JobAccepted:
    """Queue a batch of images for indexing; poll the returned job for progress and result.
    Archives (.zip, .tar, .tar.gz) among the files are expanded by a worker: each member is an
    item named by its path in the archive, and the job's total grows as they are listed."""
    settings = jobs.settings
    require_current_model(await jobs.store.collection(collection), settings)
    job = await jobs.admit(collection)
    job.call_back(callback_url)
    form = await read_form(request, settings)
    files = files_of(form, "files")
    if not files:
        raise InvalidRequest("the form has no 'files' parts", code="no_files")
    with tempfile.TemporaryDirectory(prefix="simsearch-upload-") as folder:
        images, archives = await split_archives(files, Path(folder))
        uploads = await to_uploads(images, parse_metadata(form, settings), settings)
        await job.take(len(uploads))
        await jobs.provision(collection)
        accepted = await job.submit(JobType.index, uploads, archives)
    log.info("index job queued", extra={"job_id": job.job_id, "collection": collection, "items": len(uploads)})
    return accepted


# Redis takes 64-bit indices: a larger offset would be a Redis error (500), not an empty page.
MAX_OFFSET = 10**9
# Renditions are per tenant (behind a key): shared caches must not keep them, and browsers must
# not guess a type other than image/jpeg.
CONTENT_HEADERS = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


class ImagePage(BaseModel):
    total: int
    offset: int
    limit: int
    images: list[ImageRecord]


class LookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_ids: list[Annotated[str, Field(pattern=IMAGE_ID.pattern)]] = Field(max_length=10_000)


@router.get("", response_model=ImagePage)
async def list_images(
    collection: CollectionName,
    store: StoreDep,
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    limit: int = Query(50, ge=1, le=500),
    filter: str | None = Query(None, description='a metadata filter as JSON, e.g. {"label": "cat"}'),
    requester: Requester = "",
) -> ImagePage:
    """Page through a collection, in the order images were added; with `filter`, only the images
    whose metadata passes it (the collection is scanned: `total` counts every match)."""
    node = text_filter(filter)
    if not await store.collection_exists(collection):
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    if node is not None:
        total, images = await store.filtered_page(collection, filters.parse(node), offset, limit, requester)
    else:
        total, images = await store.image_page(collection, offset, limit)
    return ImagePage(total=total, offset=offset, limit=limit, images=images)


@router.post(paths.LOOKUP)
async def lookup_images(collection: CollectionName, body: LookupRequest, store: StoreDep) -> dict[str, list[str]]:
    """Which of these ids the collection holds (ids are SHA-256 of the bytes, first 32 hex digits):
    lets a client skip files that are already indexed without uploading them."""
    return {"existing": await store.existing(collection, body.image_ids)}


@router.get("/{image_id}", response_model=ImageRecord)
async def get_image(collection: CollectionName, image_id: ImageId, store: StoreDep) -> ImageRecord:
    record = await store.image(collection, image_id)
    if record is None:
        raise NotFound(f"no image {image_id} in collection {collection!r}", code="image_not_found")
    return record


@router.get("/{image_id}/content", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def get_image_content(collection: CollectionName, image_id: ImageId, store: StoreDep) -> Response:
    """A JPEG rendition of the image, 512 px on its long side (or its own size if smaller)."""
    data = await store.rendition(collection, image_id)
    if data is None:
        raise NotFound(f"no image {image_id} in collection {collection!r}", code="image_not_found")
    return Response(data, media_type="image/jpeg", headers=CONTENT_HEADERS)


@router.delete("/{image_id}", status_code=204, response_class=Response)
async def delete_image(collection: CollectionName, image_id: ImageId, store: StoreDep) -> Response:
    if not await store.delete_image(collection, image_id):
        raise NotFound(f"no image {image_id} in collection {collection!r}", code="image_not_found")
    return Response(status_code=204)
