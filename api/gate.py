"""Authentication and rate limits, in front of everything else (a pure ASGI middleware).

FastAPI reads and parses a route's body parameter before any dependency runs, so a key checked by
a dependency is checked only after an anonymous client's 32 MiB of JSON has been parsed (~830 MB of
Python objects). The gate decides from the headers alone, before the app sees the request, and
answers 401/403/429 itself without reading the body. It leaves the key it found (or None when the
service runs open) in the scope's per-request state, where `api.auth.principal_of` picks it up.

What it counts, in Redis so that every API replica shares the budgets:
- every request except the health probes, per key when a key was checked, else per client address
  (`/openapi.json`, `/docs`, `/metrics` and the gallery's files included);
- failed authentications per client address: past `AUTH_FAILURES_PER_MINUTE` the address gets 429
  for the rest of the minute even with a valid key, or guessing would stay free.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import (
    GATE_PASSED,
    PRINCIPAL,
    REQUESTER,
    ApiKey,
    authenticate,
    check_rate,
    rate_key,
)
from api.errors import send_error
from api.limits import route_path
from api.metrics import RequestMetrics
from api.netaddr import client_address, parse_networks
from api.paths import METRICS, PROBES, V1
from api.settings import ApiSettings
from shared.errors import RateLimited, SimsearchError, Unauthorized
from shared.keys import auth_failures

FAILURE_WINDOW_S = 60


def needs_key(path: str) -> bool:
    return path in (V1, METRICS) or path.startswith(f"{V1}/")


def failure_key(address: str) -> str:
    return auth_failures(address)


def _locked_out(address: str, ttl: int) -> RateLimited:
    exc = RateLimited(f"too many failed authentications from {address}; try again later")
    exc.headers = {"Retry-After": str(max(int(ttl), 1))}
    return exc


_COUNT_FAILURE = """
redis.call('SET', KEYS[1], 0, 'EX', ARGV[1], 'NX')
return {redis.call('INCR', KEYS[1]), redis.call('TTL', KEYS[1])}
"""


async def admit_key(
    redis: Redis, keys: list[ApiKey], headers: dict[str, str], address: str, per_second: int, failures_per_minute: int
) -> ApiKey:
    """The caller's key, or Unauthorized/RateLimited. One Redis round trip either way."""
    fkey = failure_key(address)
    try:
        principal = authenticate(keys, headers)
    except Unauthorized:
        if failures_per_minute > 0:
            # The window starts at the first failure (SET NX EX; INCR keeps the TTL), so a client
            # cannot time its guesses around a fixed minute boundary; one script: never a key
            # without TTL (not MULTI: redis-py's asyncio cluster runs a transaction's commands on
            # another event loop, and the connections it leaves behind break later requests).
            count, ttl = await redis.eval(_COUNT_FAILURE, 1, fkey, FAILURE_WINDOW_S)
            if count > failures_per_minute:
                raise _locked_out(address, ttl) from None
        raise
    assert principal is not None  # keys are configured
    pipe = redis.pipeline(transaction=False)
    pipe.get(fkey)
    pipe.ttl(fkey)
    if per_second > 0:
        rkey = rate_key(f"key:{principal.name}")
        pipe.incr(rkey)
        pipe.expire(rkey, 2)
    failures, ttl, *rate = await pipe.execute()
    if failures_per_minute > 0 and int(failures or 0) >= failures_per_minute:
        raise _locked_out(address, ttl)
    if rate and rate[0] > per_second:
        raise RateLimited(f"more than {per_second} requests per second for key:{principal.name}")
    return principal


class AccessGate:
    def __init__(self, app: ASGIApp, settings: ApiSettings, metrics: RequestMetrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.trusted = parse_networks(settings.trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in PROBES:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers: dict[str, str] = {}
        forwarded: list[str] = []
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = value
            if name == "x-forwarded-for":
                forwarded.append(value)
        peer = (scope.get("client") or (None,))[0]
        address = client_address(peer, forwarded, self.trusted)
        status, code, detail, extra = 0, "", "", None
        try:
            principal = await self._admit(route_path(scope), address, headers, scope["app"].state.store.redis)
        except SimsearchError as exc:
            status, code, detail, extra = exc.status_code, exc.code, exc.detail, exc.headers
        except (RedisConnectionError, RedisTimeoutError):
            status, code, extra = 503, "redis_unavailable", {"Retry-After": "2"}
            detail = "the job store is unreachable; retry shortly"
        if status:
            has_body = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
            await send_error(send, status, code, detail, extra, close=has_body)
            # Refused before routing, so the metrics middleware never sees it.
            self.metrics.record(scope["method"], "refused_by_gate", status, time.perf_counter() - started)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state[GATE_PASSED], state[PRINCIPAL] = True, principal
        state[REQUESTER] = f"key:{principal.name}" if principal is not None else f"ip:{address}"
        await self.app(scope, receive, send)

    async def _admit(self, path: str, address: str, headers: dict[str, str], redis: Redis) -> ApiKey | None:
        settings = self.settings
        if not settings.api_keys or not needs_key(path):
            await check_rate(redis, f"ip:{address}", settings.rate_limit_per_second)
            return None
        limits = settings.rate_limit_per_second, settings.auth_failures_per_minute
        return await admit_key(redis, settings.api_keys, headers, address, *limits)
