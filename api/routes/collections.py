from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends

from api.auth import Principal, principal_of
from api.deps import CollectionName, QueueDep, SettingsDep, StoreDep
from api.store import Upload
from shared.errors import Conflict, NotFound
from shared.models.registry import MODELS
from shared.queueing import INDEX_QUEUE, REEMBED_CHUNK_TASK
from shared.schemas import CollectionInfo, JobAccepted, JobInput, JobType

router = APIRouter(prefix="/v1/collections", tags=["collections"], dependencies=[Depends(principal_of)])


@router.get("", response_model=list[CollectionInfo])
async def list_collections(store: StoreDep, principal: Principal) -> list[CollectionInfo]:
    """The collections this API key may use (all of them when the service runs open)."""
    return [c for c in await store.collections() if principal is None or principal.may_use(c.name)]


@router.get("/{collection}", response_model=CollectionInfo)
async def get_collection(collection: CollectionName, store: StoreDep) -> CollectionInfo:
    info = await store.collection(collection)
    if info is None:
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    return info


@router.post("/{collection}/reembed", status_code=202, response_model=JobAccepted)
async def reembed_collection(
    collection: CollectionName, store: StoreDep, queue: QueueDep, settings: SettingsDep
) -> JobAccepted:
    """Recompute every vector with the model this deployment runs (from the stored renditions).

    The collection keeps serving its current vectors until the job swaps the new ones in at once.
    Images added meanwhile with the same model (e.g. after an INPUT_SIZE change) end up with the
    final embedding too; while a switch to another model runs, new images are refused (409) as
    before. Only images whose rendition cannot be decoded leave (the job's `dropped`).
    """
    info = await store.collection(collection)
    if info is None:
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    if not info.image_count:
        raise Conflict("the collection is empty: its first image sets its model", code="nothing_to_reembed")
    spec = MODELS[settings.embedding_model]
    job_id = uuid.uuid4().hex
    ids = await store.begin_reembed(collection, job_id, settings.embedding)
    if isinstance(ids, str):
        raise Conflict(f"re-embed job {ids} is still running for this collection", code="reembed_running")
    if not ids:
        await store.abort_reembed(collection, job_id)
        raise Conflict("the collection is empty: its first image sets its model", code="nothing_to_reembed")
    uploads = [Upload(JobInput(filename="", image_id=i, size=0), None) for i in ids]
    params = {"collection": collection, "model": spec.name, "dim": spec.dim, "embedding": settings.embedding}
    try:
        await store.create_job(job_id, JobType.reembed, collection, params, uploads)
        await queue.send_chunks(
            REEMBED_CHUNK_TASK, job_id, collection, len(ids), settings.index_chunk_size, INDEX_QUEUE
        )
    except BaseException:
        # A job that cannot run must not hold the collection's re-embed mark for a week.
        await store.abort_reembed(collection, job_id)
        raise
    return JobAccepted(job_id=job_id, status_url=f"/v1/jobs/{job_id}", total=len(ids))
