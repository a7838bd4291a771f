"""API keys (stored only as SHA-256 hashes), collection scopes, and a per-key rate limit.

`API_KEYS` is a JSON list of `{"name", "sha256", "collections", "scopes"}`; `collections` holds
name patterns (`*` wildcards; `["*"]` = every collection); `scopes` grants powers beyond one's own
collections (`["metrics"]`: may scrape `/metrics`, which names every tenant's collections). Make a
key and its entry with `python -m api.auth new-key --name alice --collections 'alice-*'`. Keys are
random 256-bit tokens, so a plain SHA-256 is enough to store them (no password stretching needed).

The key is checked by `api.gate.AccessGate` from the headers alone, before any body is read; the
route dependency `principal_of` only picks up what the gate found and checks the collection scope.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Annotated, Literal

from fastapi import Depends, Request
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from shared.errors import Forbidden, RateLimited, SimsearchError, Unauthorized
from shared.keys import rate


class ApiKey(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    collections: list[str] = ["*"]
    scopes: list[Literal["metrics"]] = []

    def may_use(self, collection: str) -> bool:
        return any(fnmatch.fnmatchcase(collection, pattern) for pattern in self.collections)


# Where the gate leaves its findings in the ASGI scope's per-request "state".
GATE_PASSED = "simsearch.gate"
PRINCIPAL = "simsearch.principal"
REQUESTER = "simsearch.requester"  # who is asking: "key:<name>", or "ip:<address>" when open


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _presented_token(headers: Mapping[str, str]) -> str | None:
    header = headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return headers.get("x-api-key") or None


def authenticate(keys: list[ApiKey], headers: Mapping[str, str]) -> ApiKey | None:
    """The caller's key (headers with lower-case names); None when the service runs open."""
    if not keys:
        return None
    token = _presented_token(headers)
    if token is None:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    digest = hash_key(token)
    for key in keys:
        if hmac.compare_digest(key.sha256, digest):
            return key
    raise Unauthorized("unknown API key")


def require_scope(principal: ApiKey | None, collection: str) -> None:
    if principal is not None and not principal.may_use(collection):
        raise Forbidden(f"API key {principal.name!r} may not use collection {collection!r}")


def job_not_found(job_id: str) -> SimsearchError:
    """The one answer for a job that is unknown, expired, or another tenant's: it names nothing,
    so a job id seen elsewhere tells a key neither whose it is nor what kind of job it is."""
    return SimsearchError(f"no job {job_id!r} (unknown or expired)", code="job_not_found", status_code=404)


def rate_key(subject: str) -> str:
    return rate(subject, int(time.time()))


async def check_rate(redis: Redis, subject: str, per_second: int) -> None:
    if per_second <= 0:
        return
    key = rate_key(subject)
    pipe = redis.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 2)
    count, _ = await pipe.execute()
    if count > per_second:
        raise RateLimited(f"more than {per_second} requests per second for {subject}")


async def principal_of(request: Request) -> ApiKey | None:
    state = request.scope.get("state") or {}
    if GATE_PASSED in state:
        principal = state[PRINCIPAL]
    else:
        # An app assembled without the gate must still never run open by accident.
        principal = authenticate(request.app.state.settings.api_keys, request.headers)
    collection = request.path_params.get("collection")
    if collection is not None:
        require_scope(principal, collection)
    return principal


Principal = Annotated[ApiKey | None, Depends(principal_of)]


async def requester_of(request: Request) -> str:
    """Who is asking, for per-requester turns: the key's name, else the client address."""
    state = request.scope.get("state") or {}
    if REQUESTER in state:
        return state[REQUESTER]
    principal = state.get(PRINCIPAL)
    return f"key:{principal.name}" if principal is not None else f"ip:{request.client.host if request.client else ''}"


Requester = Annotated[str, Depends(requester_of)]


async def metrics_reader(request: Request) -> None:
    """With keys configured, only a key with the `metrics` scope may read every tenant's figures."""
    principal = await principal_of(request)
    if principal is not None and "metrics" not in principal.scopes:
        raise Forbidden(f"API key {principal.name!r} lacks the 'metrics' scope")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m api.auth")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new-key", help="make a key; prints it once and the API_KEYS entry to add")
    new.add_argument("--name", required=True)
    new.add_argument("--collections", nargs="+", default=["*"])
    new.add_argument("--scopes", nargs="*", default=[], choices=["metrics"])
    args = parser.parse_args()
    token = "ssk_" + secrets.token_urlsafe(32)
    entry = ApiKey(name=args.name, sha256=hash_key(token), collections=args.collections, scopes=args.scopes)
    print(f"key (give it to the client; it is not stored): {token}")
    print(f"API_KEYS entry: {json.dumps(entry.model_dump())}")


if __name__ == "__main__":
    main()
