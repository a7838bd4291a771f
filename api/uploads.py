"""Reading multipart uploads within limits, and turning them into job inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from api.limits import media_type
from api.metadata import MetadataLimits, MetadataTooLarge, attach
from api.metadata import parse_metadata as parse_metadata_field
from api.settings import ApiSettings
from api.store import Upload
from shared.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia
from shared.imaging import archive_kind, content_id, safe_filename
from shared.schemas import ItemError, JobInput

# Non-file form fields are held in memory whole; the API reads only `metadata`.
MAX_FORM_FIELDS = 16


def metadata_limits(settings: ApiSettings) -> MetadataLimits:
    return MetadataLimits(
        per_image=settings.metadata_max_bytes_per_image,
        per_request=settings.metadata_max_bytes_per_request,
        max_depth=settings.metadata_max_depth,
    )


async def read_form(request: Request, settings: ApiSettings) -> FormData:
    if media_type(request.headers.get("content-type")) != "multipart/form-data":
        raise UnsupportedMedia("expected a multipart/form-data body")
    # Starlette enforces these while parsing and answers 400 past them.
    part_cap = settings.metadata_max_bytes_per_request
    try:
        return await request.form(
            max_files=settings.max_files_per_request, max_fields=MAX_FORM_FIELDS, max_part_size=part_cap
        )
    except HTTPException as exc:
        # A non-file field over the part cap is Starlette's 400 "Part exceeded maximum size";
        # the only field read is `metadata`, whose size limit is a 413.
        if exc.status_code == 400 and "exceeded maximum size" in str(exc.detail):
            raise MetadataTooLarge(f"a form field is over {part_cap} bytes") from exc
        raise


def files_of(form: FormData, field: str) -> list[UploadFile]:
    return [part for part in form.getlist(field) if isinstance(part, UploadFile)]


async def split_archives(files: list[UploadFile], folder: Path) -> tuple[list[UploadFile], list[tuple[dict, Path]]]:
    """Archives (zip, tar, tar.gz...: by their first bytes) go to files in `folder`, to be stored
    as sources a worker expands; the rest are images. Archives are copied, never read whole."""
    images, archives = [], []
    for part in files:
        head = await part.read(512)
        await part.seek(0)
        if archive_kind(head) is None:
            images.append(part)
            continue
        path = folder / f"archive-{len(archives)}"
        with path.open("wb") as out:
            while block := await part.read(1 << 20):
                out.write(block)
        await part.close()
        archives.append(({"kind": "archive", "filename": safe_filename(part.filename)}, path))
    return images, archives


def parse_metadata(form: FormData, settings: ApiSettings) -> dict[str, dict[str, Any]]:
    raw = form.get("metadata")
    if isinstance(raw, UploadFile):
        raise InvalidRequest("'metadata' must be a plain form field holding JSON, not a file")
    return parse_metadata_field(raw, metadata_limits(settings))


async def to_uploads(
    files: list[UploadFile], metadata: dict[str, dict[str, Any]], settings: ApiSettings
) -> list[Upload]:
    if len(files) > settings.max_files_per_request:
        raise PayloadTooLarge(f"at most {settings.max_files_per_request} files per request")
    names = [(part.filename or "", safe_filename(part.filename)) for part in files]
    # Checked before any file is read: the request is refused whole, not after reading 256 MB.
    attached = attach(names, metadata, settings.metadata_max_bytes_per_request)
    uploads = []
    for part, (_, filename), meta in zip(files, names, attached, strict=True):
        data = await part.read()
        await part.close()
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
