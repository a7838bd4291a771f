from __future__ import annotations

from fastapi import APIRouter

from api.deps import CollectionName, StoreDep
from shared.errors import NotFound
from shared.schemas import CollectionInfo

router = APIRouter(prefix="/v1/collections", tags=["collections"])


@router.get("", response_model=list[CollectionInfo])
async def list_collections(store: StoreDep) -> list[CollectionInfo]:
    return await store.collections()


@router.get("/{collection}", response_model=CollectionInfo)
async def get_collection(collection: CollectionName, store: StoreDep) -> CollectionInfo:
    info = await store.collection(collection)
    if info is None:
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    return info
