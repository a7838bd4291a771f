"""`BlobStore` for async code (the API): each call runs in a worker thread, the event loop never blocks.

A thin wrapper rather than aioboto3: one implementation and one set of tests serve both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Self, TypeVar

import anyio.to_thread

from shared.blobs import BlobStore, Data

T = TypeVar("T")


class AsyncBlobStore:
    def __init__(self, store: BlobStore, limiter: anyio.CapacityLimiter | None = None) -> None:
        self.store = store
        # None = anyio's default limiter (40 threads, shared with the rest of the app's sync calls).
        self._limiter = limiter

    @property
    def url(self) -> str:
        return self.store.url

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(partial(func, *args), limiter=self._limiter)

    async def put(self, key: str, data: Data) -> None:
        await self._run(self.store.put, key, data)

    async def put_many(self, items: Mapping[str, Data] | Iterable[tuple[str, Data]]) -> None:
        await self._run(self.store.put_many, list(items.items() if isinstance(items, Mapping) else items))

    async def put_file(self, key: str, path: Path) -> None:
        await self._run(self.store.put_file, key, path)

    async def get(self, key: str) -> bytes | None:
        return await self._run(self.store.get, key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._run(self.store.get_many, list(keys))

    async def delete(self, keys: str | Iterable[str]) -> None:
        await self._run(self.store.delete, keys if isinstance(keys, str) else list(keys))

    async def exists(self, key: str) -> bool:
        return await self._run(self.store.exists, key)

    async def sweep(self, prefix: str, older_than_s: float) -> int:
        return await self._run(self.store.sweep, prefix, older_than_s)

    async def aclose(self) -> None:
        await self._run(self.store.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
