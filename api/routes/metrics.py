from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api import paths
from api.auth import metrics_reader
from api.deps import StoreDep
from api.metrics import render

router = APIRouter(tags=["operations"])


# With API keys configured: a key with the `metrics` scope (the figures name every tenant's collections).
@router.get(paths.METRICS, response_class=Response, dependencies=[Depends(metrics_reader)])
async def metrics(request: Request, store: StoreDep) -> Response:
    """Prometheus exposition: HTTP, jobs, queues, collections, and every worker's embedding figures."""
    return Response(
        await render(request.app.state.metrics_registry, store.redis, request.app.state.broker),
        media_type=CONTENT_TYPE_LATEST,
    )
