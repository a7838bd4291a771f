"""Expiry for upload bytes nobody will process: a job that was never created or queued, or whose
tasks were lost. Processed uploads are deleted by the worker at once; this sweep only catches the
abandoned ones, older than UPLOAD_TTL_SECONDS. Every API replica may run it: deleting is
idempotent."""

from __future__ import annotations

import asyncio
import logging

from shared.blobs_async import AsyncBlobStore
from shared.logs import RepeatedFailure

log = logging.getLogger(__name__)

UPLOADS = "uploads"


async def sweep_uploads_forever(blobs: AsyncBlobStore, older_than_s: float, every_s: float) -> None:
    failures = RepeatedFailure(log, "upload sweep")
    while True:
        try:
            removed = await blobs.sweep(UPLOADS, older_than_s)
            if removed:
                log.info("removed %d abandoned uploads", removed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a blob store hiccup must not end the sweeping
            failures.failed(exc)
        else:
            failures.succeeded()
        await asyncio.sleep(every_s)
