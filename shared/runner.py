"""Runs sans-I/O operations on a Redis client: `SyncRunner` (workers), `AsyncRunner` (API); the
job lifecycle's typed clients on them: `shared.jobs.clients` (collections: `shared.collections`).

An operation is a generator that yields `Batch`es of commands and receives their replies, so
the logic exists once and each runner only knows how to execute a batch.

On a Redis Cluster a batch's commands may target different slots: a plain batch is then a
cluster pipeline (redis-py routes each command), scripts run one by one (each on its slot's
node), and a transaction or a pinned batch runs on the connection of the node serving its first
key (the operations keep such a batch in one slot). A node that no longer serves that slot
(a failover moved it) answers MOVED: the slot map is refreshed and the batch fails as an outage,
which the callers' outage handling runs again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError


@dataclass(frozen=True)
class Call:
    method: str  # a redis-py client method
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScriptCall:
    name: str  # a key of the script table the runner registered
    keys: list[str]
    args: list[Any]


@dataclass(frozen=True)
class Batch:
    calls: list[Call | ScriptCall]
    # MULTI/EXEC: every key of the batch in one Redis Cluster slot
    transaction: bool = False
    # Run on one connection to the node serving this key (WAIT after a write counts that
    # connection's writes); in a Redis Cluster, that node's own client.
    pin: str | None = None


T = TypeVar("T")
Op = Generator[Batch, list[Any], T]


def _single(batch: Batch) -> bool:
    return len(batch.calls) == 1 and not batch.transaction


def drive(op: Op[T], execute: Callable[[Batch], list[Any]]) -> T:
    try:
        batch = next(op)
        while True:
            batch = op.send(execute(batch))
    except StopIteration as stop:
        return stop.value


def _first_key(batch: Batch) -> str:
    call = batch.calls[0]
    key = batch.pin or (call.keys[0] if isinstance(call, ScriptCall) else call.args[0])
    return key.decode() if isinstance(key, bytes) else str(key)


_MOVED = (MovedError, AskError, ClusterDownError, TryAgainError)


def text(value: bytes | str | None) -> str | None:
    """A Redis reply as text (clients return bytes unless told to decode)."""
    return value.decode() if isinstance(value, bytes) else value


class SyncRunner:
    def __init__(self, client: redis.Redis, scripts: Mapping[str, str]) -> None:
        self.redis = client
        self._scripts = {name: client.register_script(src) for name, src in scripts.items()}

    def run(self, op: Op[T]) -> T:
        return drive(op, self._execute)

    def _execute(self, batch: Batch) -> list[Any]:
        if _single(batch):  # one round trip, not three (a pipeline checks SCRIPT EXISTS first)
            return [self._call(batch.calls[0], self.redis)]
        if isinstance(self.redis, RedisCluster):
            return self._execute_cluster(batch, self.redis)
        pipe = self.redis.pipeline(transaction=batch.transaction)
        for call in batch.calls:
            self._call(call, pipe)
        return pipe.execute()

    def _execute_cluster(self, batch: Batch, cluster: RedisCluster) -> list[Any]:
        if batch.transaction or batch.pin:
            # The node's own client: one connection, so a WAIT counts the writes before it, and
            # its pipeline loads scripts a promoted replica lacks (scripts are not replicated).
            try:
                node = cluster.get_node_from_key(_first_key(batch))
                pipe = cluster.get_redis_connection(node).pipeline(transaction=batch.transaction)
                for call in batch.calls:
                    self._call(call, pipe)
                return pipe.execute()
            except (
                *_MOVED,
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                redis.exceptions.SlotNotCoveredError,
            ) as exc:
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    cluster.nodes_manager.initialize()  # the slot map, as it is after a failover
                raise redis.exceptions.ConnectionError(f"the node serving the slot is gone ({exc}); run again") from exc
            except redis.exceptions.ResponseError as exc:
                if "MOVED" not in str(exc) and "READONLY" not in str(exc):
                    raise
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    cluster.nodes_manager.initialize()
                raise redis.exceptions.ConnectionError(f"the slot moved ({exc}); run again") from exc
        if any(isinstance(call, ScriptCall) for call in batch.calls):
            return [self._call(call, cluster) for call in batch.calls]
        pipe = cluster.pipeline()
        for call in batch.calls:
            self._call(call, pipe)
        return pipe.execute()

    def node_info(self, key: str, section: str) -> dict[str, Any]:
        """`INFO section` of the node serving `key` (the primary whose replicas a WAIT counted)."""
        if isinstance(self.redis, RedisCluster):
            return self.redis.get_redis_connection(self.redis.get_node_from_key(key)).info(section)
        return self.redis.info(section)

    def _call(self, call: Call | ScriptCall, client: Any) -> Any:
        if isinstance(call, ScriptCall):
            return self._scripts[call.name](keys=call.keys, args=call.args, client=client)
        return getattr(client, call.method)(*call.args, **call.kwargs)


class AsyncRunner:
    def __init__(self, client: AsyncRedis, scripts: Mapping[str, str]) -> None:
        self.redis = client
        self._scripts = {name: client.register_script(src) for name, src in scripts.items()}

    async def run(self, op: Op[T]) -> T:
        return await self._drive(op)

    async def _execute(self, batch: Batch) -> list[Any]:
        if _single(batch):
            return [await self._one(batch.calls[0])]
        if isinstance(self.redis, AsyncRedisCluster):
            return await self._execute_cluster(batch, self.redis)
        pipe = self.redis.pipeline(transaction=batch.transaction)
        for call in batch.calls:
            if isinstance(call, ScriptCall):
                await self._scripts[call.name](keys=call.keys, args=call.args, client=pipe)
            else:
                getattr(pipe, call.method)(*call.args, **call.kwargs)
        return await pipe.execute()

    async def _one(self, call: Call | ScriptCall) -> Any:
        if isinstance(call, ScriptCall):
            return await self._scripts[call.name](keys=call.keys, args=call.args, client=self.redis)
        return await getattr(self.redis, call.method)(*call.args, **call.kwargs)

    async def _execute_cluster(self, batch: Batch, cluster: AsyncRedisCluster) -> list[Any]:
        # The API's batches: reads, and scripts of one slot each. A transaction's reads of one slot
        # run as a cluster pipeline (the asyncio cluster client has no MULTI): each read is still
        # of one key, and the API's transactional reads tolerate a write between them (they are
        # re-checked by the worker that acts on them).
        if any(isinstance(call, ScriptCall) for call in batch.calls):
            return [await self._one(call) for call in batch.calls]
        pipe = cluster.pipeline()
        for call in batch.calls:
            getattr(pipe, call.method)(*call.args, **call.kwargs)  # type: ignore[union-attr]
        return await pipe.execute()

    async def _drive(self, op: Op[T]) -> T:
        try:
            batch = next(op)
            while True:
                batch = op.send(await self._execute(batch))
        except StopIteration as stop:
            return stop.value
