"""Near-duplicate groups of a collection (worker/analysis/duplicates.py): a job, like clustering."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from api import paths
from api.auth import principal_of
from api.deps import CollectionName
from api.jobs_submit import Submitter
from shared.errors import NotFound
from shared.schemas import JobAccepted, JobType

router = APIRouter(prefix=paths.DUPLICATES, tags=["duplicates"], dependencies=[Depends(principal_of)])


class DuplicatesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_similarity: float = Field(default=0.95, ge=0.5, le=1.0, description="cosine similarity of an edge")
    k: int = Field(default=10, ge=1, le=100, description="neighbours asked per image")
    max_groups: int = Field(default=1000, ge=1, le=100_000, description="groups listed in the result")
    callback_url: str | None = None


@router.post("", status_code=202, response_model=JobAccepted)
async def find_duplicates(collection: CollectionName, body: DuplicatesRequest, jobs: Submitter) -> JobAccepted:
    """Group near-duplicate images: connected components of the k-nearest-neighbour graph whose
    edges reach `min_similarity`, largest first, each member with its similarity to the group's
    representative (its best-connected member)."""
    if not await jobs.store.collection_exists(collection):
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    job = jobs.new(collection, {"collection": collection, **body.model_dump(exclude={"callback_url"})})
    job.call_back(body.callback_url)
    return await job.submit(JobType.duplicates)
