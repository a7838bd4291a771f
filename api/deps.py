"""FastAPI dependencies: the clients the lifespan built, and validated path parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from api.queue import TaskQueue
from api.rendered import RenderedJobs
from api.settings import ApiSettings
from api.store import ApiStore
from api.waiter import JobWaiter
from shared.schemas import COLLECTION_NAME, IMAGE_ID


# Async on purpose: FastAPI runs a plain `def` dependency on a worker thread, a thread hop per
# dependency per request (several per search request; POST p50 4.18 -> 3.95 ms measured).
async def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def get_store(request: Request) -> ApiStore:
    return request.app.state.store


async def get_queue(request: Request) -> TaskQueue:
    return request.app.state.queue


async def get_waiter(request: Request) -> JobWaiter:
    return request.app.state.waiter


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
StoreDep = Annotated[ApiStore, Depends(get_store)]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]
WaiterDep = Annotated[JobWaiter, Depends(get_waiter)]


async def get_rendered(request: Request) -> RenderedJobs:
    return request.app.state.rendered


RenderedDep = Annotated[RenderedJobs, Depends(get_rendered)]

CollectionName = Annotated[
    str,
    Path(pattern=COLLECTION_NAME.pattern, description="letters, digits, '_', '-', '.'; 1-64 characters"),
]
ImageId = Annotated[str, Path(pattern=IMAGE_ID.pattern, description="32 hex characters (from the image bytes)")]

# Query parameters several routes share.
TopK = Annotated[int, Query(ge=1, le=1000, description="matches per query")]
MinSimilarity = Annotated[
    float | None,
    Query(
        ge=-1.0,
        le=1.0,
        description="drop matches below this cosine similarity; omitted: the collection's calibrated threshold "
        "(the answer's `threshold` says which applied); 0: keep every match",
    ),
]
CallbackUrl = Annotated[str | None, Query(description="POSTed the job (signed) when it ends")]
