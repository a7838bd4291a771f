"""Runs sans-I/O operations on a Redis client: `SyncRunner` (workers), `AsyncRunner` (API); the
job lifecycle's typed clients on them: `shared.jobs.clients` (collections: `shared.collections`).

An operation is a generator that yields `Batch`es of commands and receives their replies, so
the logic exists once and each runner only knows how to execute a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.asyncio import Redis as AsyncRedis


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
    transaction: bool = False


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
        pipe = self.redis.pipeline(transaction=batch.transaction)
        for call in batch.calls:
            self._call(call, pipe)
        return pipe.execute()

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
            call = batch.calls[0]
            if isinstance(call, ScriptCall):
                return [await self._scripts[call.name](keys=call.keys, args=call.args, client=self.redis)]
            return [await getattr(self.redis, call.method)(*call.args, **call.kwargs)]
        pipe = self.redis.pipeline(transaction=batch.transaction)
        for call in batch.calls:
            if isinstance(call, ScriptCall):
                await self._scripts[call.name](keys=call.keys, args=call.args, client=pipe)
            else:
                getattr(pipe, call.method)(*call.args, **call.kwargs)
        return await pipe.execute()

    async def _drive(self, op: Op[T]) -> T:
        try:
            batch = next(op)
            while True:
                batch = op.send(await self._execute(batch))
        except StopIteration as stop:
            return stop.value
