"""Celery's broker, apart from the data Redis when asked: a standalone Redis (`redis://`), a Redis
behind Sentinel (`sentinel://host:port[;sentinel://host:port…]` and the master's name), or
RabbitMQ (`amqp://`). Celery cannot use a Redis Cluster as its broker (celery/kombu#526), so the
data may live on a cluster while the queues live here. Unset, it is REDIS_URL (one Redis for all).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import unquote, urlparse

import redis
import redis.asyncio
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

Kind = Literal["redis", "sentinel", "amqp"]
KINDS: dict[str, Kind] = {
    "redis": "redis",
    "rediss": "redis",
    "sentinel": "sentinel",
    "amqp": "amqp",
    "amqps": "amqp",
    "pyamqp": "amqp",
}


def broker_kind(url: str) -> Kind:
    scheme = urlparse(url.split(";", 1)[0]).scheme
    if scheme not in KINDS:
        raise ValueError(f"BROKER_URL must be redis://, sentinel:// or amqp://, not {scheme or url!r}")
    return KINDS[scheme]


def transport_options(url: str, master_name: str) -> dict[str, Any]:
    """What kombu needs beyond the URL: the Sentinel master's name."""
    return {"master_name": master_name} if broker_kind(url) == "sentinel" else {}


def _sentinels(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    nodes, auth = [], {}
    for part in url.split(";"):
        parsed = urlparse(part.strip())
        nodes.append((parsed.hostname or "localhost", parsed.port or 26379))
        if parsed.password:
            auth = {"password": unquote(parsed.password)}
    return nodes, auth


def broker_redis(url: str, master_name: str, **options: Any) -> redis.Redis | None:
    """A client of the broker's Redis (its current primary, behind Sentinel), for what Celery does
    not do itself (the heartbeat of held messages, queue depths); None for RabbitMQ."""
    kind = broker_kind(url)
    if kind == "redis":
        return redis.Redis.from_url(url, **options)
    if kind == "sentinel":
        nodes, auth = _sentinels(url)
        return Sentinel(nodes, sentinel_kwargs=auth, **options).master_for(master_name, **auth)
    return None


def async_broker_redis(url: str, master_name: str, **options: Any) -> redis.asyncio.Redis | None:
    kind = broker_kind(url)
    if kind == "redis":
        return redis.asyncio.Redis.from_url(url, **options)
    if kind == "sentinel":
        nodes, auth = _sentinels(url)
        return AsyncSentinel(nodes, sentinel_kwargs=auth, **options).master_for(master_name, **auth)
    return None
