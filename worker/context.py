"""What a task body gets: one object with the job, the clients and the model, instead of seven
arguments. Also the outcome helpers every job kind uses."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from shared.errors import SimsearchError
from shared.jobs import Jobs
from shared.jobs.lifecycle import JobRecord, Outcome
from shared.models.base import Embedder
from shared.schemas import ItemError, ItemOutcome, ItemStatus, JobInput, JobStatus
from worker.ingest.sources import Sources
from worker.ingest.stages import Stages
from worker.search.replica import ReplicaSet
from worker.store import Embedding, WorkerStore


@dataclass(frozen=True)
class JobContext:
    job: JobRecord
    jobs: Jobs
    store: WorkerStore
    embedder: Embedder  # a search-only worker runs only shard searches and deadlines, which need none
    replicas: ReplicaSet
    max_pixels: int
    served_by: str | None = None
    sources: Sources | None = None  # URLs and bucket objects (imports, search by URL)
    stages: Stages = field(default_factory=Stages)  # where this task's time went (logged by ingest)
    preparers: Executor | None = None  # decodes a chunk's images side by side (None: one by one)

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def collection(self) -> str:
        return self.job.collection

    @property
    def embedding(self) -> Embedding:
        return embedding_of(self.embedder)


def embedding_of(embedder: Embedder) -> Embedding:
    from shared.settings import embedding_id

    return Embedding(embedder.name, embedding_id(embedder.name, embedder.input_size), embedder.dim)


def failed(index: int, filename: str, image_id: str, code: str, detail: str) -> Outcome:
    outcome = ItemOutcome(index=index, filename=filename, image_id=image_id, status=ItemStatus.failed)
    return outcome, ItemError(index=index, filename=filename, image_id=image_id, error=code, detail=detail)


def failed_item(index: int, inp: JobInput | ItemError | None, code: str, detail: str) -> Outcome:
    if isinstance(inp, JobInput):
        return failed(index, inp.filename, inp.image_id, code, detail)
    return failed(index, "", "", code, detail)


def ok(index: int, inp: JobInput, status: ItemStatus) -> Outcome:
    return ItemOutcome(index=index, filename=inp.filename, image_id=inp.image_id, status=status), None


def end_single(ctx: JobContext, outcome: ItemOutcome, result: dict[str, Any] | SimsearchError) -> None:
    """End a one-item job (search, cluster, duplicates): its item recorded, then the job finished,
    failed with the error's code and detail when `result` is one."""
    if isinstance(result, SimsearchError):
        error = ItemError(
            index=outcome.index,
            filename=outcome.filename or None,
            image_id=outcome.image_id or None,
            error=result.code,
            detail=result.detail,
        )
        ctx.jobs.record_items(ctx.job_id, [(outcome.model_copy(update={"status": ItemStatus.failed}), error)])
        ctx.jobs.finish(ctx.job_id, JobStatus.failed, {"error": result.code, "detail": result.detail})
        return
    ctx.jobs.record_items(ctx.job_id, [(outcome, None)])
    ctx.jobs.finish(ctx.job_id, JobStatus.succeeded, result)
