"""The job lifecycle's operations as typed methods: `Jobs` on the workers' sync client, `AsyncJobs`
on the API's asyncio client. Each method runs the lifecycle's operation of the same name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis

from shared.jobs.lifecycle import JobLifecycle, JobRecord, Outcome
from shared.runner import AsyncRunner, SyncRunner
from shared.schemas import ItemError, JobInput, JobStatus, JobType, JobView


class Jobs(SyncRunner):
    def __init__(self, client: redis.Redis, lifecycle: JobLifecycle, scripts: Mapping[str, str]) -> None:
        super().__init__(client, scripts)
        self.lifecycle = lifecycle

    def create(
        self,
        job_id: str,
        job_type: JobType,
        collection: str,
        params: dict[str, Any],
        inputs: list[JobInput],
        sources: int = 0,
    ) -> int:
        return self.run(self.lifecycle.create(job_id, job_type, collection, params, inputs, sources))

    def get(self, job_id: str) -> JobView | None:
        return self.run(self.lifecycle.get(job_id))

    def load(self, job_id: str) -> JobRecord | None:
        return self.run(self.lifecycle.load(job_id))

    def counts(self, job_id: str) -> tuple[int, int]:
        return self.run(self.lifecycle.counts(job_id))

    def inputs(self, job_id: str, indices: list[int]) -> list[JobInput | ItemError]:
        return self.run(self.lifecycle.inputs(job_id, indices))

    def unrecorded(self, job_id: str, indices: list[int]) -> list[int]:
        return self.run(self.lifecycle.unrecorded(job_id, indices))

    def index_result(self, job_id: str) -> dict[str, Any]:
        return self.run(self.lifecycle.index_result(job_id))

    def mark_running(self, job_id: str) -> bool:
        return self.run(self.lifecycle.mark_running(job_id))

    def touch(self, job_id: str) -> None:
        return self.run(self.lifecycle.touch(job_id))

    def count_attempt(self, job_id: str, what: str) -> int:
        return self.run(self.lifecycle.count_attempt(job_id, what))

    def record_items(self, job_id: str, outcomes: list[Outcome]) -> int:
        return self.run(self.lifecycle.record_items(job_id, outcomes))

    def reserve_batch(self, job_id: str, source: int, number: int, size: int) -> tuple[int, bool] | None:
        return self.run(self.lifecycle.reserve_batch(job_id, source, number, size))

    def add_inputs(self, job_id: str, first: int, inputs: list[JobInput]) -> None:
        return self.run(self.lifecycle.add_inputs(job_id, first, inputs))

    def source_finished(self, job_id: str, source: int) -> bool:
        return self.run(self.lifecycle.source_finished(job_id, source))

    def source_done(self, job_id: str, source: int) -> int:
        return self.run(self.lifecycle.source_done(job_id, source))

    def finish(self, job_id: str, status: JobStatus, result: dict[str, Any]) -> bool:
        return self.run(self.lifecycle.finish(job_id, status, result))

    def after_finish(self, job_id: str, owner: str | None, callback: bool) -> None:
        self.run(self.lifecycle.after_finish(job_id, owner, callback))


class AsyncJobs(AsyncRunner):
    def __init__(self, client: AsyncRedis, lifecycle: JobLifecycle, scripts: Mapping[str, str]) -> None:
        super().__init__(client, scripts)
        self.lifecycle = lifecycle

    async def create(
        self,
        job_id: str,
        job_type: JobType,
        collection: str,
        params: dict[str, Any],
        inputs: list[JobInput],
        sources: int = 0,
    ) -> int:
        return await self.run(self.lifecycle.create(job_id, job_type, collection, params, inputs, sources))

    async def get(self, job_id: str) -> JobView | None:
        return await self.run(self.lifecycle.get(job_id))

    async def load(self, job_id: str) -> JobRecord | None:
        return await self.run(self.lifecycle.load(job_id))

    async def counts(self, job_id: str) -> tuple[int, int]:
        return await self.run(self.lifecycle.counts(job_id))

    async def inputs(self, job_id: str, indices: list[int]) -> list[JobInput | ItemError]:
        return await self.run(self.lifecycle.inputs(job_id, indices))

    async def unrecorded(self, job_id: str, indices: list[int]) -> list[int]:
        return await self.run(self.lifecycle.unrecorded(job_id, indices))

    async def index_result(self, job_id: str) -> dict[str, Any]:
        return await self.run(self.lifecycle.index_result(job_id))

    async def mark_running(self, job_id: str) -> bool:
        return await self.run(self.lifecycle.mark_running(job_id))

    async def touch(self, job_id: str) -> None:
        return await self.run(self.lifecycle.touch(job_id))

    async def count_attempt(self, job_id: str, what: str) -> int:
        return await self.run(self.lifecycle.count_attempt(job_id, what))

    async def record_items(self, job_id: str, outcomes: list[Outcome]) -> int:
        return await self.run(self.lifecycle.record_items(job_id, outcomes))

    async def reserve_batch(self, job_id: str, source: int, number: int, size: int) -> tuple[int, bool] | None:
        return await self.run(self.lifecycle.reserve_batch(job_id, source, number, size))

    async def add_inputs(self, job_id: str, first: int, inputs: list[JobInput]) -> None:
        return await self.run(self.lifecycle.add_inputs(job_id, first, inputs))

    async def source_finished(self, job_id: str, source: int) -> bool:
        return await self.run(self.lifecycle.source_finished(job_id, source))

    async def source_done(self, job_id: str, source: int) -> int:
        return await self.run(self.lifecycle.source_done(job_id, source))

    async def finish(self, job_id: str, status: JobStatus, result: dict[str, Any]) -> bool:
        return await self.run(self.lifecycle.finish(job_id, status, result))
