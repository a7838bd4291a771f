"""A Redis Cluster between a primary's death and its replica's promotion raises errors of its own
(CLUSTERDOWN, TRYAGAIN, a slot not covered, no node reachable): the API answers them like a Redis
outage, 503 with Retry-After, never a 500."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError, TryAgainError

from api.errors import install_error_handlers


@pytest.mark.parametrize(
    "error",
    [
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        TryAgainError("TRYAGAIN"),
        SlotNotCoveredError("slot 1234 is not covered"),
        RedisClusterException("Redis Cluster cannot be connected"),
    ],
)
def test_cluster_errors_are_503(error: Exception) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise error

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get("/boom")

    resp = asyncio.run(get())
    assert resp.status_code == 503 and resp.json()["error"] == "redis_unavailable"
    assert resp.headers["retry-after"] == "2"
