from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api import paths
from api.auth import principal_of
from api.deps import CollectionName, StoreDep
from api.jobs_submit import Submitter
from api.routes.images import MAX_OFFSET
from shared.errors import NotFound
from shared.schemas import ImageRecord, JobAccepted, JobType

router = APIRouter(prefix=paths.CLUSTERS, tags=["clusters"], dependencies=[Depends(principal_of)])


class ClusterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(default=None, ge=2, le=100, description="null: choose K by silhouette score")
    k_min: int = Field(default=2, ge=2, le=100)
    k_max: int = Field(default=10, ge=2, le=100)

    @model_validator(mode="after")
    def _range(self) -> ClusterRequest:
        if self.k_min > self.k_max:
            raise ValueError("k_min must not exceed k_max")
        return self


class ClusterPage(BaseModel):
    cluster: int
    total: int
    offset: int
    limit: int
    images: list[ImageRecord]


@router.post("", status_code=202, response_model=JobAccepted)
async def cluster_collection(
    collection: CollectionName, jobs: Submitter, request: ClusterRequest | None = None
) -> JobAccepted:
    """Cluster the collection (MiniBatch K-means; K by silhouette score when `k` is null)."""
    if not await jobs.store.collection_exists(collection):
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    params = (request or ClusterRequest()).model_dump()
    job = jobs.new(collection, {"collection": collection, **params})
    return await job.submit(JobType.cluster)


async def _clustering_or_404(store: Any, collection: str) -> dict[str, Any]:
    clustering = await store.clustering(collection)
    if clustering is None:
        raise NotFound(f"collection {collection!r} has not been clustered", code="no_clusters")
    return clustering


@router.get("")
async def get_clusters(collection: CollectionName, store: StoreDep) -> dict[str, Any]:
    """The latest clustering; `stale` is true when images were added or deleted since."""
    return await _clustering_or_404(store, collection)


@router.get("/{cluster}/images", response_model=ClusterPage)
async def cluster_images(
    collection: CollectionName,
    cluster: int,
    store: StoreDep,
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    limit: int = Query(50, ge=1, le=500),
) -> ClusterPage:
    """One cluster's images, nearest its centroid first."""
    clustering = await _clustering_or_404(store, collection)
    if not 0 <= cluster < clustering["k"]:
        raise NotFound(f"no cluster {cluster}; this clustering has {clustering['k']}", code="cluster_not_found")
    total, images = await store.cluster_page(collection, cluster, offset, limit)
    return ClusterPage(cluster=cluster, total=total, offset=offset, limit=limit, images=images)
