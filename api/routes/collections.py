from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import paths
from api.auth import Principal, principal_of
from api.deps import CollectionName, SettingsDep, StoreDep
from api.jobs_submit import Submitter
from api.store import Upload
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.models.registry import MODELS
from shared.schemas import CollectionInfo, JobAccepted, JobInput, JobType
from shared.shards import MAX_SHARDS

router = APIRouter(prefix=paths.COLLECTIONS, tags=["collections"], dependencies=[Depends(principal_of)])


@router.get("", response_model=list[CollectionInfo])
async def list_collections(store: StoreDep, principal: Principal) -> list[CollectionInfo]:
    """The collections this API key may use (all of them when the service runs open)."""
    return [c for c in await store.collections() if principal is None or principal.may_use(c.name)]


class CollectionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shards: int | None = Field(default=None, ge=1, le=MAX_SHARDS, description="default: DEFAULT_SHARDS")


@router.put("/{collection}", response_model=CollectionInfo, responses={201: {"model": CollectionInfo}})
async def create_collection(
    collection: CollectionName, request: Request, response: Response, store: StoreDep, settings: SettingsDep
) -> CollectionInfo:
    """Create an empty collection with a fixed number of shards (201; 200 if it exists with them).

    An image's shard is a stable hash of its id; each shard is searched by the workers serving it
    (`WORKER_SHARDS`). The number cannot change later (409 `shards_fixed`)."""
    body = await request.body()
    try:
        spec = CollectionSpec.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise ValidationFailed(list(exc.errors())) from exc
    shards = spec.shards or settings.default_shards
    created, have = await store.create_collection(collection, shards)
    if have != shards:
        raise Conflict(f"collection {collection!r} has {have} shards; that cannot change", code="shards_fixed")
    response.status_code = 201 if created else 200
    info = await store.collection(collection)
    assert info is not None
    return info


@router.get("/{collection}", response_model=CollectionInfo)
async def get_collection(collection: CollectionName, store: StoreDep) -> CollectionInfo:
    info = await store.collection(collection)
    if info is None:
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    return info


@router.post("/{collection}/reembed", status_code=202, response_model=JobAccepted)
async def reembed_collection(collection: CollectionName, jobs: Submitter) -> JobAccepted:
    """Recompute every vector with the model this deployment runs (from the stored renditions).

    The collection keeps serving its current vectors until the job swaps the new ones in at once.
    Images added meanwhile with the same model (e.g. after an INPUT_SIZE change) end up with the
    final embedding too; while a switch to another model runs, new images are refused (409) as
    before. Only images whose rendition cannot be decoded leave (the job's `dropped`).
    """
    store, settings = jobs.store, jobs.settings
    info = await store.collection(collection)
    if info is None:
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    if not info.image_count:
        raise Conflict("the collection is empty: its first image sets its model", code="nothing_to_reembed")
    spec = MODELS[settings.embedding_model]
    params = {"collection": collection, "model": spec.name, "dim": spec.dim, "embedding": settings.embedding}
    job = jobs.new(collection, params)
    ids = await store.begin_reembed(collection, job.job_id, settings.embedding)
    if isinstance(ids, str):
        raise Conflict(f"re-embed job {ids} is still running for this collection", code="reembed_running")
    if not ids:
        await store.abort_reembed(collection, job.job_id)
        raise Conflict("the collection is empty: its first image sets its model", code="nothing_to_reembed")
    uploads = [Upload(JobInput(filename="", image_id=i, size=0), None) for i in ids]
    try:
        return await job.submit(JobType.reembed, uploads)
    except BaseException:
        # A job that cannot run must not hold the collection's re-embed mark for a week.
        await store.abort_reembed(collection, job.job_id)
        raise
