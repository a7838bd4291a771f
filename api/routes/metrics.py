from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import StoreDep
from api.metrics import render

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, store: StoreDep) -> Response:
    """Prometheus exposition: HTTP, jobs, queues, collections, and every worker's embedding figures."""
    return Response(await render(request.app.state.metrics_registry, store.redis), media_type=CONTENT_TYPE_LATEST)
