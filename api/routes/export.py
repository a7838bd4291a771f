from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from api import paths
from api.auth import principal_of
from api.deps import CollectionName, StoreDep
from api.export import csv_rows, npy_zip
from shared.errors import Conflict, NotFound

router = APIRouter(prefix=paths.COLLECTION, tags=["export"], dependencies=[Depends(principal_of)])


@router.get("/export", response_class=StreamingResponse)
async def export_embeddings(
    collection: CollectionName, store: StoreDep, format: Literal["csv", "npy"] = Query("csv")
) -> StreamingResponse:
    """Stream every embedding: CSV like the notebook's feature file, or a zip of .npy + ids."""
    info = await store.collection(collection)
    if info is None:
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    if info.dimension is None:
        raise Conflict("the collection holds no vectors yet", code="empty_collection")
    if format == "csv":
        body, media, name = csv_rows(store, collection, info.dimension), "text/csv", f"{collection}.csv"
    else:
        body, media, name = npy_zip(store, collection, info.dimension), "application/zip", f"{collection}.zip"
    return StreamingResponse(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})
