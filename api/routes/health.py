from __future__ import annotations

import asyncio

from fastapi import APIRouter

from api import paths
from api.deps import SettingsDep, StoreDep
from shared.errors import ServiceUnavailable

router = APIRouter(tags=["health"])


@router.get(paths.HEALTHZ)
async def healthz() -> dict[str, str]:
    """The process is up (it does not touch Redis)."""
    return {"status": "ok"}


@router.get(paths.READYZ)
async def readyz(store: StoreDep, settings: SettingsDep) -> dict[str, str]:
    """Ready to take work: Redis answers."""
    try:
        await asyncio.wait_for(store.ping(), timeout=settings.redis_timeout_s)
    except Exception as exc:
        raise ServiceUnavailable(f"redis is not reachable: {type(exc).__name__}", code="redis_unavailable") from exc
    return {"status": "ready"}
