"""Expensive requests take turns per requester, not across every tenant.

A filtered listing scans the whole collection in threads that hold the GIL. One lock for the whole
API process made 40 listings of one tenant's big collection (0.11 s each) delay another tenant's
small one to 1.98 s (0.01 s alone). Here each requester (API key, or client address when the API
runs open) runs one such request at a time, and at most `total` run at once in the process: a
tenant queues behind its own work, and another tenant waits for at most `total` turns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio


class Turns:
    def __init__(self, total: int = 4) -> None:
        self._overall = anyio.Semaphore(total)
        self._mine: dict[str, tuple[anyio.Lock, int]] = {}  # requester -> (its lock, holders + waiters)

    @asynccontextmanager
    async def turn(self, requester: str) -> AsyncIterator[None]:
        lock, users = self._mine.get(requester, (None, 0))
        lock = lock or anyio.Lock()
        self._mine[requester] = (lock, users + 1)
        try:
            async with lock, self._overall:
                yield
        finally:
            lock, users = self._mine[requester]
            if users == 1:
                del self._mine[requester]  # no entry left behind per address ever seen
            else:
                self._mine[requester] = (lock, users - 1)

    def waiting(self, requester: str) -> int:
        """Requests of `requester` holding or waiting for a turn (tests, metrics)."""
        return self._mine.get(requester, (None, 0))[1]
