"""Reading multipart uploads within limits, and turning them into job inputs."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from api.settings import ApiSettings
from api.store import Upload
from shared.errors import InvalidRequest, PayloadTooLarge, SimsearchError, UnsupportedMedia
from shared.imaging import content_id, safe_filename
from shared.schemas import ItemError, JobInput


async def read_form(request: Request, settings: ApiSettings) -> FormData:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMedia("expected a multipart/form-data body")
    # Starlette enforces these counts while parsing and answers 400 past them.
    return await request.form(max_files=settings.max_files_per_request, max_fields=settings.max_files_per_request + 16)


def files_of(form: FormData, field: str) -> list[UploadFile]:
    return [part for part in form.getlist(field) if isinstance(part, UploadFile)]


def parse_metadata(form: FormData) -> dict[str, dict[str, Any]]:
    raw = form.get("metadata")
    if raw is None:
        return {}
    if isinstance(raw, UploadFile):
        raise InvalidRequest("'metadata' must be a plain form field holding JSON, not a file")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SimsearchError(f"'metadata' is not valid JSON: {exc}", code="invalid_metadata", status_code=422) from exc
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise SimsearchError(
            "'metadata' must be a JSON object mapping file names to JSON objects",
            code="invalid_metadata",
            status_code=422,
        )
    return value


async def to_uploads(
    files: list[UploadFile], metadata: dict[str, dict[str, Any]], settings: ApiSettings
) -> list[Upload]:
    if len(files) > settings.max_files_per_request:
        raise PayloadTooLarge(f"at most {settings.max_files_per_request} files per request")
    uploads = []
    for part in files:
        data = await part.read()
        await part.close()
        filename = safe_filename(part.filename)
        meta = metadata.get(part.filename or "") or metadata.get(filename)
        inp = JobInput(filename=filename, image_id=content_id(data), size=len(data), metadata=meta)
        if len(data) > settings.max_image_bytes:
            inp.rejected = ItemError(
                filename=filename,
                image_id=inp.image_id,
                error="file_too_large",
                detail=f"{len(data)} bytes, over the per-file limit of {settings.max_image_bytes}",
            )
            uploads.append(Upload(inp, None))
        else:
            uploads.append(Upload(inp, data))
    return uploads
