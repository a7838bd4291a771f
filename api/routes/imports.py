"""Bulk imports: a list of URLs (JSON, or a text/CSV file of up to 1,000,000 lines) or a bucket
prefix, indexed as one job. Workers fetch the images (shared/fetch.py: public addresses only);
a file or bucket is listed by a worker into the job in batches, so neither is held whole."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api import paths
from api.auth import principal_of
from api.bodies import parse_body
from api.compat import require_current_model
from api.deps import CollectionName
from api.jobs_submit import Submitter
from api.limits import media_type
from api.store import Upload
from api.uploads import files_of, read_form
from api.urls import MAX_URL_LENGTH, valid_url
from shared.errors import InvalidRequest, SimsearchError, UnsupportedMedia
from shared.schemas import JobAccepted, JobInput, JobType

log = logging.getLogger(__name__)
router = APIRouter(prefix=paths.IMPORTS, tags=["imports"], dependencies=[Depends(principal_of)])

TEXT_TYPES = ("text/plain", "text/csv", "text/uri-list")


class UrlItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=MAX_URL_LENGTH)
    metadata: dict[str, Any] | None = None


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    urls: list[Annotated[str, Field(max_length=MAX_URL_LENGTH)] | UrlItem] | None = None
    source: str | None = Field(None, max_length=MAX_URL_LENGTH, description="s3://bucket/prefix")
    callback_url: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImportRequest:
        if (self.urls is None) == (self.source is None):
            raise ValueError("give exactly one of urls and source")
        return self


IMPORT_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": ImportRequest.model_json_schema()},
            "text/plain": {"schema": {"type": "string", "description": "one URL per line, or url,metadata-json"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
        "required": True,
    }
}


@router.post("", status_code=202, response_model=JobAccepted, openapi_extra=IMPORT_DOC)
async def import_images(collection: CollectionName, request: Request, jobs: Submitter) -> JobAccepted:
    """Index images from URLs or a bucket; poll the job (its total grows while a file or bucket is
    listed). Items that cannot be fetched fail with `fetch_failed`, `blocked_address`,
    `too_large`, `timeout` or `invalid_image`."""
    settings = jobs.settings
    require_current_model(await jobs.store.collection(collection), settings)
    job = await jobs.admit(collection)
    kind = media_type(request.headers.get("content-type"))
    callback = request.query_params.get("callback_url")
    await jobs.provision(collection)
    if kind == "application/json":
        body = parse_body(ImportRequest, await request.body())
        job.call_back(body.callback_url or callback)
        if body.source is not None:
            spec = {"kind": "bucket", "url": _bucket(body.source, settings.import_buckets)}
            return await job.submit(JobType.index, sources=[(spec, None)])
        uploads = _url_uploads(body.urls or [], settings.max_import_urls, settings.metadata_max_bytes_per_image)
        await job.take(len(uploads))
        return await job.submit(JobType.index, uploads)
    job.call_back(callback)
    with tempfile.TemporaryDirectory(prefix="simsearch-import-") as folder:
        path = Path(folder) / "urls"
        lines = 0  # an upper bound of its URLs (a header or blank lines count too): the items reserved
        if kind in TEXT_TYPES:
            with path.open("wb") as out:
                async for block in request.stream():
                    out.write(block)
                    lines += block.count(b"\n")
        elif kind == "multipart/form-data":
            files = files_of(await read_form(request, settings), "file")
            if len(files) != 1:
                raise InvalidRequest("send the URL list as one 'file' part", code="no_file")
            with path.open("wb") as out:
                while block := await files[0].read(1 << 20):
                    out.write(block)
                    lines += block.count(b"\n")
        else:
            raise UnsupportedMedia("send JSON {urls|source}, a text/plain or text/csv list, or a multipart 'file'")
        await job.take(lines + 1)
        accepted = await job.submit(JobType.index, sources=[({"kind": "urls", "filename": "urls"}, path)])
    log.info("import job queued", extra={"job_id": job.job_id, "collection": collection})
    return accepted


def _url_uploads(urls: list[str | UrlItem], limit: int, metadata_max: int) -> list[Upload]:
    if not urls:
        raise InvalidRequest("the list of urls is empty", code="no_urls")
    if len(urls) > limit:
        raise InvalidRequest(f"at most {limit} URLs per JSON import; send a file for more", code="too_many_urls")
    uploads = []
    for item in urls:
        url, metadata = (item, None) if isinstance(item, str) else (item.url, item.metadata)
        if metadata is not None and len(json.dumps(metadata).encode()) > metadata_max:
            raise InvalidRequest(f"metadata of {url[:100]} is over {metadata_max} bytes", code="metadata_too_large")
        valid_url(url)
        uploads.append(Upload(JobInput(filename=url, image_id="", size=0, url=url, metadata=metadata), None))
    return uploads


def _bucket(source: str, allowed: frozenset[str]) -> str:
    if not source.startswith("s3://") or len(source) <= len("s3://"):
        raise InvalidRequest("source must be s3://bucket/prefix", code="invalid_source")
    bucket = source[len("s3://") :].split("/", 1)[0]
    if bucket not in allowed:
        detail = f"bucket {bucket!r} is not in IMPORT_S3_BUCKETS"
        raise SimsearchError(detail, code="bucket_not_allowed", status_code=403)
    return source
