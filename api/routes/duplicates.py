"""Near-duplicate groups of a collection (worker/duplicates.py): a job, like clustering."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from api.auth import principal_of
from api.deps import CollectionName, QueueDep, SettingsDep, StoreDep
from api.urls import callback_params
from shared.errors import NotFound
from shared.queueing import DUPLICATES_TASK, INDEX_QUEUE
from shared.schemas import JobAccepted, JobType

router = APIRouter(
    prefix="/v1/collections/{collection}/duplicates", tags=["duplicates"], dependencies=[Depends(principal_of)]
)


class DuplicatesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_similarity: float = Field(default=0.95, ge=0.5, le=1.0, description="cosine similarity of an edge")
    k: int = Field(default=10, ge=1, le=100, description="neighbours asked per image")
    max_groups: int = Field(default=1000, ge=1, le=100_000, description="groups listed in the result")
    callback_url: str | None = None


@router.post("", status_code=202, response_model=JobAccepted)
async def find_duplicates(
    collection: CollectionName, body: DuplicatesRequest, store: StoreDep, queue: QueueDep, settings: SettingsDep
) -> JobAccepted:
    """Group near-duplicate images: connected components of the k-nearest-neighbour graph whose
    edges reach `min_similarity`, largest first, each member with its similarity to the group's
    representative (its best-connected member)."""
    if not await store.collection_exists(collection):
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    params = {"collection": collection, **body.model_dump(exclude={"callback_url"})}
    params |= callback_params(body.callback_url, settings)
    job_id = uuid.uuid4().hex
    await store.create_job(job_id, JobType.duplicates, collection, params, [])
    await queue.send(DUPLICATES_TASK, [job_id, collection], INDEX_QUEUE)
    return JobAccepted(job_id=job_id, status_url=f"/v1/jobs/{job_id}", total=1)
