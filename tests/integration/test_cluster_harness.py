"""The Redis Cluster harness (services.start_cluster) checked on its own: 3 primaries and 3 replicas
on loopback, 1,000 keys spread over the primaries, the primary of one key killed with SIGKILL, a
replica promoted, and the same redis-py RedisCluster clients (sync and asyncio, no restart) read
the key again once they have retried through the outage. Prints how long that took."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.cluster as async_cluster
from redis.cluster import RedisCluster

from tests.integration.services import Cluster, start_cluster

pytestmark = pytest.mark.cluster

# What a cluster client raises while a primary is dead and not yet replaced: connection refused
# (the slot map still names the dead node), CLUSTERDOWN (the survivors marked it failed, no replica
# promoted yet), a timeout. redis-py retries these itself, but without pausing between attempts (its
# `retry` object only sets how many), so its 10 default retries are spent in milliseconds: a caller
# that must get through a failover (seconds) retries on top.
OUTAGE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = start_cluster(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def _until_read(read: Callable[[], Any], expected: Any, since: float, timeout: float) -> tuple[float, Counter[str]]:
    """Read until it returns `expected`: (seconds from `since`, outage errors seen by name)."""
    errors: Counter[str] = Counter()
    while time.monotonic() - since < timeout:
        try:
            if read() == expected:
                return time.monotonic() - since, errors
        except OUTAGE as exc:
            errors[type(exc).__name__] += 1
        time.sleep(0.05)
    raise TimeoutError(f"no read of {expected!r} within {timeout}s; errors {dict(errors)}")


async def _until_read_async(read, expected: Any, since: float, timeout: float) -> tuple[float, Counter[str]]:
    errors: Counter[str] = Counter()
    while time.monotonic() - since < timeout:
        try:
            if await read() == expected:
                return time.monotonic() - since, errors
        except OUTAGE as exc:
            errors[type(exc).__name__] += 1
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no read of {expected!r} within {timeout}s; errors {dict(errors)}")


def test_keys_spread_a_primary_dies_and_the_same_clients_read_its_keys_from_the_promoted_replica(
    cluster: Cluster,
) -> None:
    primaries = cluster.primaries()
    assert len(primaries) == 3 and len(cluster.ports) == 6
    replica_of = {port: cluster.replica_of(port) for port in primaries}
    assert sorted([*primaries, *replica_of.values()]) == sorted(cluster.ports)

    client = RedisCluster.from_url(cluster.url, decode_responses=True)
    keys = {f"harness:{i}": f"v{i}" for i in range(1000)}
    pipe = client.pipeline(transaction=False)
    for key, value in keys.items():
        pipe.set(key, value)
    assert pipe.execute() == [True] * 1000

    # Spread: by the cluster's own slot map, and by what each primary holds.
    owners = Counter(cluster.primary_for_key(key) for key in list(keys)[::10])
    assert set(owners) == set(primaries) and min(owners.values()) >= 20, owners
    sizes = {}
    for port in primaries:
        with cluster.node(port) as node:
            sizes[port] = node.dbsize()
    assert sum(sizes.values()) == 1000 and min(sizes.values()) > 250, sizes

    key = "harness:42"
    slot = cluster.keyslot(key)
    victim = cluster.primary_for_key(key)
    heir = replica_of[victim]
    with asyncio.Runner() as loop:  # one loop for the test: an asyncio client stays in the loop it ran in
        run = loop.run
        async_client = async_cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
        assert run(async_client.get(key)) == keys[key]  # connected before the kill
        assert client.get(key) == keys[key]
        cluster.wait_replicated()  # every key is on the replicas: none may be lost

        cluster.kill(victim)
        killed = time.monotonic()
        # One call on its own gives up long before a replica can be promoted (node timeout 2 s):
        # redis-py's own retries (10, each refreshing the slot map) do not wait between attempts.
        with pytest.raises(redis.ConnectionError):
            client.get(key)
        with pytest.raises(redis.ConnectionError):
            run(async_client.get(key))
        gave_up_s = time.monotonic() - killed
        assert gave_up_s < 1.5
        results: dict[str, Any] = {}

        def in_thread(name: str, work: Callable[[], Any]) -> threading.Thread:
            def target() -> None:
                try:
                    results[name] = work()
                except BaseException as exc:
                    results[name] = exc

            thread = threading.Thread(target=target, name=name)
            thread.start()
            return thread

        threads = [
            in_thread("failover", lambda: (cluster.wait_failover(victim, timeout=30), time.monotonic() - killed)),
            in_thread("sync", lambda: _until_read(lambda: client.get(key), keys[key], killed, 30)),
        ]
        results["async"] = run(_until_read_async(lambda: async_client.get(key), keys[key], killed, 30))
        for thread in threads:
            thread.join(35)
        for name, result in results.items():
            if isinstance(result, BaseException):
                raise AssertionError(f"{name}: {result!r}") from result

        promoted, failover_s = results["failover"]
        sync_s, sync_errors = results["sync"]
        async_s, async_errors = results["async"]
        print(
            f"\nprimary {victim} killed; one call each (sync, asyncio) gave up after {gave_up_s:.2f} s; "
            f"replica {promoted} promoted after {failover_s:.2f} s; first good read: "
            f"sync {sync_s:.2f} s (errors {dict(sync_errors)}), asyncio {async_s:.2f} s (errors {dict(async_errors)})"
        )

        # (a) The promoted replica is the dead primary's own replica and answers for the slot itself.
        assert promoted == heir
        assert cluster.primary_for_slot(slot) == heir
        assert sorted(cluster.primaries()) == sorted([p for p in primaries if p != victim] + [heir])
        with cluster.node(heir) as node:
            assert node.get(key) == keys[key]  # no MOVED: the slot is its own
            assert node.info("replication")["role"] == "master"

        # (b), (c) The same client objects got there after the outage; every key is still there.
        # (`read` and `write` are on both clients, after they refreshed their slot maps.)
        pipe = client.pipeline(transaction=False)
        for name in keys:
            pipe.get(name)
        assert pipe.execute() == list(keys.values())
        assert client.set(key, "after") and client.get(key) == "after"

        async def async_checks() -> None:
            pipe = async_client.pipeline(transaction=False)
            for name in keys:
                pipe.get(name)
            assert await pipe.execute() == [("after" if name == key else value) for name, value in keys.items()]
            assert await async_client.set(key, "again") and await async_client.get(key) == "again"
            await async_client.aclose()

        run(async_checks())
        client.close()
        assert failover_s < 20 and sync_s < 20 and async_s < 20
