"""Riding out a Redis outage inside the task that met it.

Redis is both the job store and the broker here. Celery's own retry (`autoretry_for`) publishes a
new message, which it cannot while the broker is down, so it dropped the chunk (`Reject(requeue=
False)`) and the job stayed `running` with images missing. Instead a task that loses Redis waits
for it in place and runs its body again once it answers: every body is idempotent, and the task's
own message stays unacknowledged meanwhile (in Redis's append-only file), so a worker that dies
while waiting is redelivered too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from kombu.exceptions import OperationalError
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.collections.ops import ReplicationTimeout

log = logging.getLogger(__name__)

# The store (or a cluster between a primary's death and its replica's promotion), or the broker.
OUTAGE = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    RedisClusterException,
    OperationalError,
)
T = TypeVar("T")


def answers(client: redis.Redis) -> bool:
    """Whether Redis answers. A Redis Cluster answers once every primary does: the slot map is
    read afresh (a failover replaced a primary), then each primary pinged (a ping alone would go to
    one node, maybe the dead one, and the client would not learn of the promotion)."""
    if isinstance(client, RedisCluster):
        client.nodes_manager.initialize()
        return bool(client.ping(target_nodes=RedisCluster.PRIMARIES))
    return bool(client.ping())


def wait_for_redis(client: redis.Redis, deadline: float, first_delay: float = 0.25) -> bool:
    """Ping until Redis answers (True) or the deadline passes (False), backing off to 5 s."""
    delay = first_delay
    while time.monotonic() < deadline:
        try:
            if answers(client):
                return True
        except (RedisConnectionError, RedisTimeoutError, RedisClusterException):
            pass
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)
    return False


def through_outages(client: redis.Redis, step: Callable[[], T], wait_s: float, what: str) -> T:
    """`step()`, run again after each Redis outage it meets, for at most `wait_s` of outage in all;
    past that the outage's error propagates (the task's message stays unacknowledged and comes
    back once Redis does)."""
    deadline = time.monotonic() + wait_s
    lagging = 0.5
    while True:
        try:
            return step()
        except OUTAGE as exc:
            if time.monotonic() >= deadline:
                raise
            if isinstance(exc, ReplicationTimeout):  # Redis answers; its replicas lag: give them time
                log.warning("replicas behind during %s (%s); running it again in %.1f s", what, exc, lagging)
                time.sleep(min(lagging, max(0.0, deadline - time.monotonic())))
                lagging = min(lagging * 2, 5.0)
                continue
            log.warning("Redis unreachable during %s (%s); waiting for it to run again", what, exc)
            # A Redis Cluster answers a ping from its other nodes while one slot's primary is being
            # replaced (seconds): never run again at once, in a tight loop.
            time.sleep(min(lagging, max(0.0, deadline - time.monotonic())))
            lagging = min(lagging * 2, 5.0)
            if not wait_for_redis(client, deadline):
                raise
            log.info("Redis is back; running %s again", what)
