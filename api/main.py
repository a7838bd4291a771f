"""The HTTP service. `create_app()` builds it; `app` is the ASGI entry point (`api.main:app`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry

from api.errors import install_error_handlers
from api.fastpoll import JobPollCache
from api.gate import AccessGate
from api.janitor import sweep_uploads_forever
from api.limits import BodySizeLimit
from api.metrics import HttpMetrics, RequestMetrics
from api.queue import TaskQueue
from api.rendered import RenderedJobs
from api.routes import batch, clusters, collections, duplicates, export, health, images, imports, jobs, metrics, search
from api.settings import ApiSettings
from api.store import ApiStore
from api.waiter import JobWaiter
from shared.blobs_async import AsyncBlobStore
from shared.connect import async_broker_redis
from shared.logs import configure_logging

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_format)
        if not settings.api_keys:
            log.warning("no API_KEYS configured: the API is open to anyone who can reach it")
        client = settings.redis_async(
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        # Pub/sub blocks on reads by design, so it gets a client without a read timeout.
        listener = settings.redis_async(socket_connect_timeout=settings.redis_timeout_s, health_check_interval=30)
        blobs = AsyncBlobStore(settings.open_blob_store())
        app.state.settings = settings
        app.state.store = ApiStore(
            client, blobs, settings.job_ttl_seconds, settings.log_maxlen, tombstone_ttl_s=settings.upload_ttl_seconds
        )
        app.state.queue = TaskQueue(settings.broker, settings.task_visibility_timeout_s, settings.broker_master)
        # Queue depths for /metrics (None: RabbitMQ, whose own metrics have them).
        app.state.broker = async_broker_redis(
            settings.broker, settings.broker_master, socket_timeout=settings.redis_timeout_s
        )
        app.state.waiter = JobWaiter(listener)
        app.state.rendered = RenderedJobs()
        app.state.waiter.start()
        sweeper = asyncio.create_task(
            sweep_uploads_forever(blobs, settings.upload_ttl_seconds, min(600.0, settings.upload_ttl_seconds / 4))
        )
        try:
            yield
        finally:
            sweeper.cancel()
            await app.state.waiter.stop()
            await blobs.aclose()
            app.state.queue.close()
            await client.aclose()
            await listener.aclose()
            if app.state.broker is not None:
                await app.state.broker.aclose()

    # /docs and /redoc from the package's own copies of Swagger UI and ReDoc: no CDN, so they work offline.
    app = FastAPIOffline(title="simsearch", version="0.1.0", lifespan=lifespan)
    app.state.metrics_registry = CollectorRegistry()
    request_metrics = RequestMetrics(app.state.metrics_registry)
    # Last added runs first: the gate authenticates and rate-limits from the headers before any
    # body is read; then plain job polls are answered before anything else runs.
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        json_bytes=settings.max_json_body_bytes,
        lookup_bytes=settings.max_lookup_body_bytes,
        import_bytes=settings.max_import_json_bytes,
    )
    app.add_middleware(HttpMetrics, metrics=request_metrics)
    app.add_middleware(JobPollCache, metrics=request_metrics)
    app.add_middleware(AccessGate, settings=settings, metrics=request_metrics)
    install_error_handlers(app)
    for module in (health, metrics, jobs, collections, images, imports, batch, search, clusters, duplicates, export):
        app.include_router(module.router)
    # The web gallery: plain files, no build step.
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="gallery")
    return app


app = create_app()
