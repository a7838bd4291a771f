"""Connections to the Redis servers, from their URLs: a standalone Redis (`redis://`) or one
behind Sentinel (`sentinel://host:port[;sentinel://host:port…]` and the master's name), for the
data (REDIS_URL) and for Celery's broker (BROKER_URL, which may also be RabbitMQ, `amqp://`).
Behind Sentinel, a client finds the current primary again after a failover. The data may also
live on a Redis Cluster (REDIS_CLUSTER=true, REDIS_URL naming any node): redis-py's RedisCluster
follows its slots (MOVED/ASK) and its failovers. Celery cannot use a Redis Cluster as its broker
(celery/kombu#526): then BROKER_URL names another Redis, or RabbitMQ. Unset, the broker is REDIS_URL.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import unquote, urlparse

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

Kind = Literal["redis", "sentinel", "amqp"]
KINDS: dict[str, Kind] = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
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


def connect(url: str, master_name: str, cluster: bool = False, **options: Any) -> redis.Redis:
    """A client of the Redis at `url`: its current primary, when behind Sentinel; the whole
    cluster, when `cluster` (any node's URL)."""
    if cluster:
        # A failover takes a few node timeouts, and the client's own retries do not wait: the
        # error reaches the callers' outage handling, which waits and runs the step again.
        return RedisCluster.from_url(url, **options)  # type: ignore[return-value]
    if broker_kind(url) == "sentinel":
        nodes, auth = _sentinels(url)
        return Sentinel(nodes, sentinel_kwargs=auth).master_for(master_name, **auth, **options)
    return redis.Redis.from_url(url, **options)


def connect_async(url: str, master_name: str, cluster: bool = False, **options: Any) -> redis.asyncio.Redis:
    if cluster:
        options.pop("retry_on_timeout", None)  # not an option of the asyncio cluster client
        return AsyncRedisCluster.from_url(url, **options)  # type: ignore[return-value]
    if broker_kind(url) == "sentinel":
        nodes, auth = _sentinels(url)
        return AsyncSentinel(nodes, sentinel_kwargs=auth).master_for(master_name, **auth, **options)
    return redis.asyncio.Redis.from_url(url, **options)


def broker_redis(url: str, master_name: str, **options: Any) -> redis.Redis | None:
    """A client of the broker's Redis, for what Celery does not do itself (the heartbeat of held
    messages, queue depths); None for RabbitMQ."""
    return None if broker_kind(url) == "amqp" else connect(url, master_name, **options)


def async_broker_redis(url: str, master_name: str, **options: Any) -> redis.asyncio.Redis | None:
    return None if broker_kind(url) == "amqp" else connect_async(url, master_name, **options)
