"""What every job-creating route shares: admission (fair shares, api/fairness.py) and the params
every job carries (owner, priority, callback), then create the job -> queue its work -> 202 with
`JobAccepted`. A route checks and parses its own request in between."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends

from api.auth import Requester
from api.deps import QueueDep, SettingsDep, StoreDep
from api.fairness import Admission, admit, release, take
from api.paths import job_url
from api.queue import TaskQueue
from api.settings import ApiSettings
from api.store import ApiStore, Upload
from api.urls import callback_params
from shared.jobs.kinds import KINDS
from shared.queueing import EXPAND_TASK, INDEX_QUEUE
from shared.schemas import JobAccepted, JobType

Source = tuple[dict[str, Any], Path | None]  # (spec, file to store or None): see ApiStore.create_job_with_sources


@dataclass
class Submission:
    """One job on its way in: its id, params and, when it was admitted, the requester's admission."""

    submitter: JobSubmitter
    collection: str
    params: dict[str, Any]
    admission: Admission | None = None
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: bool = False

    @property
    def priority(self) -> int:
        """The priority level its tasks start at: the requester's open jobs (0 when not admitted)."""
        return self.admission.open_jobs if self.admission is not None else 0

    def call_back(self, url: str | None) -> None:
        """POST the job to `url` when it ends (400 when callbacks are off or the URL is bad)."""
        self.params |= callback_params(url, self.submitter.settings)

    async def take(self, items: int, matches: int = 0) -> None:
        """Reserve the job's `items` (and a batch search's `matches`) against its requester's
        quotas: 429 past MAX_QUEUED_ITEMS_PER_KEY or MAX_RESULT_BYTES_PER_KEY."""
        if self.admission is None:
            raise RuntimeError("only an admitted job counts against quotas")
        s = self.submitter
        await take(s.store.redis, s.settings, s.requester, self.job_id, items, matches)

    async def create(
        self, job_type: JobType, uploads: list[Upload] | None = None, sources: list[Source] | None = None
    ) -> None:
        # Written as the kind's workers will read them: a route's slip is a 500 here, not a
        # job that fails on every worker later.
        KINDS[job_type].params.model_validate({**self.params, "sources": [spec for spec, _ in sources or []]})
        self.created = True  # from here on the job's record speaks for its reservation
        store = self.submitter.store
        if sources:
            await store.create_job_with_sources(
                self.job_id, self.collection, self.params, uploads or [], sources, job_type
            )
        else:
            await store.create_job(self.job_id, job_type, self.collection, self.params, uploads or [])

    def accepted(self, total: int) -> JobAccepted:
        return JobAccepted(job_id=self.job_id, status_url=job_url(self.job_id), total=total)

    async def submit(
        self, job_type: JobType, uploads: list[Upload] | None = None, sources: list[Source] | None = None
    ) -> JobAccepted:
        """Create the job, then queue its work as its kind runs it (shared.jobs.kinds): the uploads
        a chunk at a time, each of `sources` to expand, or one task for the whole job."""
        uploads, sources = uploads or [], sources or []
        await self.create(job_type, uploads, sources)
        kind, queue, args = KINDS[job_type], self.submitter.queue, [self.job_id, self.collection]
        if kind.chunked:
            size = self.submitter.settings.index_chunk_size
            await queue.send_chunks(kind.task, *args, len(uploads), size, kind.queue, self.priority)
        else:
            await queue.send(kind.task, args, kind.queue, self.priority)
        if sources:
            expansions = [[*args, n] for n in range(len(sources))]
            await queue.send_many(EXPAND_TASK, expansions, INDEX_QUEUE, [self.priority] * len(sources))
        # The total the job starts with (shared/jobs/lifecycle.py): its items, else 0 while its
        # sources are listed, else 1 (the job is one piece of work).
        return self.accepted(len(uploads) or (0 if sources else 1))


@dataclass
class JobSubmitter:
    """The clients a job-creating route needs, and who is asking (a request's dependency)."""

    store: ApiStore
    queue: TaskQueue
    settings: ApiSettings
    requester: str
    admitted: list[Submission] = field(default_factory=list)

    def new(self, collection: str, params: dict[str, Any]) -> Submission:
        """A job that takes no part in fair shares (no quota, priority 0)."""
        return Submission(self, collection, params)

    async def admit(self, collection: str, params: dict[str, Any] | None = None) -> Submission:
        """A job of the requester's, with its place reserved among their open jobs (429 past
        MAX_OPEN_JOBS_PER_KEY); its params name the collection, `params`, its owner and priority.
        `Submission.take` then reserves its items and results."""
        job_id = uuid.uuid4().hex
        admission = await admit(self.store.redis, self.settings, self.requester, job_id)
        fair = {"owner": self.requester, "priority": admission.open_jobs}
        job = Submission(self, collection, {"collection": collection, **(params or {}), **fair}, admission, job_id)
        self.admitted.append(job)
        return job

    async def release_unused(self) -> None:
        """Give back the places of jobs admitted but never created (the request failed after)."""
        for job in self.admitted:
            if not job.created:
                await release(self.store.redis, self.requester, job.job_id)

    async def provision(self, collection: str) -> None:
        """A new collection gets the deployment's shards (else: 1, implicit, with its first image)."""
        if self.settings.default_shards > 1:
            await self.store.create_collection(collection, self.settings.default_shards)


async def job_submitter(
    store: StoreDep, queue: QueueDep, settings: SettingsDep, requester: Requester
) -> AsyncIterator[JobSubmitter]:
    submitter = JobSubmitter(store, queue, settings, requester)
    try:
        yield submitter
    finally:
        await submitter.release_unused()


Submitter = Annotated[JobSubmitter, Depends(job_submitter)]
