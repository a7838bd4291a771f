"""Long-polling without busy polling: one pub/sub connection per API process wakes every waiter.

Workers publish on `ss:jobdone:<id>` when a job reaches a final status; the message is the final
record itself when it is small (a search's answer), so waiters need not read it. A waiter also
re-reads the job at least every `recheck_s`, so a message lost while Redis restarted costs latency,
not a hang.
Until the subscription is confirmed (at startup, after a reconnect) messages can be missed, so
waiters re-read every `unsubscribed_recheck_s` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from shared.keys import JOB_DONE_CHANNEL_PREFIX

log = logging.getLogger(__name__)


class JobWaiter:
    def __init__(self, client: Redis, recheck_s: float = 1.0, unsubscribed_recheck_s: float = 0.02) -> None:
        self.redis = client
        self.recheck_s = recheck_s
        self.unsubscribed_recheck_s = unsubscribed_recheck_s
        self.subscribed = asyncio.Event()
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._noticed: dict[str, float] = {}  # job id -> when its "done" message arrived (monotonic)
        self._messages: dict[str, bytes | str] = {}  # job id -> that message (kept while watched)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="job-waiter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            try:
                async with await self._pubsub() as pubsub:
                    await pubsub.psubscribe(JOB_DONE_CHANNEL_PREFIX + "*")
                    async for message in pubsub.listen():
                        if message["type"] == "psubscribe":
                            self.subscribed.set()
                        elif message["type"] == "pmessage":
                            channel = message["channel"]
                            channel = channel.decode() if isinstance(channel, bytes) else channel
                            self._notify(channel.removeprefix(JOB_DONE_CHANNEL_PREFIX), message["data"])
            except (RedisError, RedisClusterException, OSError) as exc:
                self.subscribed.clear()
                log.warning("job notifications interrupted (%s); reconnecting", exc)
                await asyncio.sleep(1.0)

    async def _pubsub(self) -> PubSub:
        """A subscription; on a Redis Cluster, on one live primary (PUBLISH reaches every node),
        chosen afresh after the slot map is refreshed, so a reconnect never waits on a dead node."""
        if not isinstance(self.redis, RedisCluster):
            return self.redis.pubsub()
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await self.redis.nodes_manager.initialize()
        primaries = self.redis.get_primaries()
        if not primaries:
            raise RedisClusterException("no primary of the cluster is known yet")
        return self.redis.pubsub(node=random.choice(primaries))  # type: ignore[return-value]

    def _notify(self, job_id: str, message: bytes | str = b"") -> None:
        if job_id in self._events:
            self._noticed[job_id] = time.monotonic()
            self._messages[job_id] = message
        for event in self._events.get(job_id, ()):
            event.set()

    def noticed(self, job_id: str) -> float | None:
        """When the job's "done" message last arrived: a view read after that shows it finished."""
        return self._noticed.get(job_id)

    def message(self, job_id: str) -> bytes | str | None:
        """The job's last "done" message: the final record itself when it was small enough."""
        return self._messages.get(job_id)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """Register before reading the job's status, so a finish in between is not missed."""
        event = asyncio.Event()
        self._events[job_id].add(event)
        try:
            yield event
        finally:
            self._events[job_id].discard(event)
            if not self._events[job_id]:
                del self._events[job_id]
                self._noticed.pop(job_id, None)
                self._messages.pop(job_id, None)

    async def sleep(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait for the event or the timeout (capped at the re-check interval); True if it fired."""
        recheck = self.recheck_s if self.subscribed.is_set() else self.unsubscribed_recheck_s
        try:
            await asyncio.wait_for(event.wait(), timeout=min(timeout, recheck))
        except TimeoutError:
            return False
        return True
