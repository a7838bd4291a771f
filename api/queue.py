"""Enqueueing by task name: the API holds a Celery *producer* only, never the worker's code."""

from __future__ import annotations

import anyio
from celery import Celery

from shared.fanout import fan_out_messages, publish
from shared.queueing import celery_config, chunk_priority


class TaskQueue:
    def __init__(self, broker_url: str, visibility_timeout_s: int, master_name: str = "mymaster") -> None:
        self.celery = Celery("simsearch-api")
        self.celery.conf.update(
            celery_config(broker_url, visibility_timeout_s, master_name),
            # Fail fast (the client gets 503) rather than holding a request while Redis is away.
            broker_connection_timeout=3,
            task_publish_retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.5},
        )

    async def send(self, name: str, args: list, queue: str, priority: int = 0) -> None:
        # kombu's publish is blocking I/O; keep it off the event loop.
        await anyio.to_thread.run_sync(lambda: self.celery.send_task(name, args=args, queue=queue, priority=priority))

    async def send_many(self, name: str, batches: list[list], queue: str, priorities: list[int] | None = None) -> None:
        if not batches:
            return

        def publish() -> None:
            with self.celery.producer_or_acquire() as producer:
                for n, args in enumerate(batches):
                    priority = priorities[n] if priorities else 0
                    self.celery.send_task(name, args=args, queue=queue, producer=producer, priority=priority)

        await anyio.to_thread.run_sync(publish)

    async def send_chunks(
        self, name: str, job_id: str, collection: str, total: int, size: int, queue: str, open_jobs: int = 0
    ) -> None:
        """One task per chunk of item indices: chunks spread a job over every worker, and each is
        one forward pass. Their priorities sink with the owner's open jobs and the chunk's place
        (shared.queueing.chunk_priority), so one tenant's big job does not hold the queue."""
        chunks = [[job_id, collection, list(range(i, min(i + size, total)))] for i in range(0, total, size)]
        await self.send_many(name, chunks, queue, [chunk_priority(open_jobs, n) for n in range(len(chunks))])

    async def send_fan_out(self, job_id: str, collection: str, shards: int, timeout_s: float) -> None:
        """A search's shard tasks (one per shard queue) and its deadline, on one connection."""
        messages = fan_out_messages(job_id, collection, shards, timeout_s)
        await anyio.to_thread.run_sync(publish, self.celery, messages)

    def close(self) -> None:
        self.celery.close()
