"""Every job operation, from creation to the final status, as a sans-I/O generator.

Each method yields `Batch`es of Redis commands and gets their replies back; `shared.runner`
executes them on the worker's sync client or the API's async client. Waiting for a job lives in
the API (`api.waiter`), which reads through `get` here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared import keys
from shared.jobs.kinds import JobParams, parse_params
from shared.jobs.records import index_result, job_params, job_seq, new_job_fields, parse_job
from shared.runner import Batch, Call, Op, ScriptCall, text
from shared.schemas import ItemError, ItemOutcome, JobInput, JobStatus, JobType, JobView, utcnow

log = logging.getLogger(__name__)

P = TypeVar("P", bound=BaseModel)
CANCELLED = "cancelled"  # the error of a job ended by its owner
FINAL_STATUSES = [s.value for s in JobStatus if s.final]
# A finished job's record travels in its "done" message up to this size (a search's: ~2 KB at k=10,
# ~16 KB at k=100); every API process receives every message (and every node of a cluster), so a
# larger result is read by those who want it instead.
ANNOUNCE_MAX_BYTES = 16 * 1024
Outcome = tuple[ItemOutcome, ItemError | None]


@dataclass(frozen=True)
class JobRecord:
    """What a worker needs of a job to run it."""

    job_id: str
    type: JobType
    collection: str
    params: JobParams  # typed by the job's kind (shared.jobs.kinds)
    seq: int  # the global sequence number at creation: orders the job against deletes
    status: JobStatus  # as loaded, when the task started
    cancelled: bool = False  # ended by POST /v1/jobs/{id}/cancel: its work not yet started is skipped

    def params_of(self, kind: type[P]) -> P:
        """The params as the model its job kind has (a task of one kind run on another's job: TypeError)."""
        if not isinstance(self.params, kind):
            raise TypeError(f"job {self.job_id} is a {self.type.value} job, not one with {kind.__name__}")
        return self.params


def _one(call: Call) -> Batch:
    return Batch([call])


class JobLifecycle:
    def __init__(self, job_ttl_s: int) -> None:
        self.job_ttl_s = job_ttl_s

    # -- create ---------------------------------------------------------------------------------
    def create(
        self,
        job_id: str,
        job_type: JobType,
        collection: str,
        params: dict[str, Any],
        inputs: list[JobInput],
        sources: int = 0,
    ) -> Op[int]:
        """Write the job and its inputs (their bytes are in the blob store already) before anything
        is queued. Returns its seq. `sources`: archives, URL files, buckets whose items workers
        will add (`reserve_batch`); the job cannot complete before each is `source_done`."""
        # The deployment-wide steps first (their own slots): a job that exists is always open
        # (the watchdog drops an open entry with no job behind it).
        now = time.time()
        calls = [
            Call("incr", (keys.SEQUENCE,)),
            Call("hincrby", (keys.JOB_COUNTS, f"{job_type.value}:created", 1)),
            Call("zadd", (keys.OPEN_JOBS, {job_id: now})),  # open until it finishes (watchdog)
        ]
        owner = params.get("owner")
        if owner:
            calls += [
                Call("zadd", (keys.owner_open(owner), {job_id: now})),
                Call("expire", (keys.owner_open(owner), self.job_ttl_s)),
            ]
        seq, *_ = yield Batch(calls)
        fields = new_job_fields(job_type, collection, len(inputs) or (0 if sources else 1), params, seq)
        if sources:
            fields["sources"] = str(sources)
        if params.get("callback_url"):
            fields["callback_url"] = params["callback_url"]
        if owner:
            fields["owner"] = owner  # its finisher counts it out of its owner's open jobs
        calls = [
            Call("hset", (keys.job(job_id),), {"mapping": fields}),
            Call("expire", (keys.job(job_id), self.job_ttl_s)),
        ]
        if inputs:
            mapping = {str(i): inp.model_dump_json() for i, inp in enumerate(inputs)}
            calls += [
                Call("hset", (keys.job_inputs(job_id),), {"mapping": mapping}),
                Call("expire", (keys.job_inputs(job_id), self.job_ttl_s)),
            ]
        yield Batch(calls, transaction=True)
        return seq

    # -- read -----------------------------------------------------------------------------------
    def get(self, job_id: str) -> Op[JobView | None]:
        """The job as clients see it, or None."""
        raw, errors = yield Batch(
            [Call("hgetall", (keys.job(job_id),)), Call("lrange", (keys.job_errors(job_id), 0, 999))]
        )
        # A record without its type is not a job (only stray fields written after a delete): unknown.
        return parse_job(job_id, raw, errors) if raw and (b"type" in raw or "type" in raw) else None

    def load(self, job_id: str) -> Op[JobRecord | None]:
        """The job as a worker runs it (a `JobRecord`), or None once it has expired."""
        (raw,) = yield _one(Call("hgetall", (keys.job(job_id),)))
        if not raw or not (b"type" in raw or "type" in raw):
            return None
        view = parse_job(job_id, raw, [])
        params = parse_params(view.type, job_params(raw))
        cancelled = view.status.final and (view.result or {}).get("error") == CANCELLED
        return JobRecord(job_id, view.type, view.collection, params, job_seq(raw), view.status, cancelled)

    def counts(self, job_id: str) -> Op[tuple[int, int]]:
        """(total, failed)."""
        ((total, failed),) = yield _one(Call("hmget", (keys.job(job_id), "total", "failed")))
        return int(total or 0), int(failed or 0)

    def inputs(self, job_id: str, indices: list[int]) -> Op[list[JobInput | ItemError]]:
        """Per index: its `JobInput`, or an `ItemError` when the record is gone or unreadable (one
        bad record fails its item, not the chunk)."""
        (raw,) = yield _one(Call("hmget", (keys.job_inputs(job_id), [str(i) for i in indices])))
        return [_parse_input(i, r) for i, r in zip(indices, raw, strict=True)]

    def unrecorded(self, job_id: str, indices: list[int]) -> Op[list[int]]:
        (raw,) = yield _one(Call("hmget", (keys.job_items(job_id), [str(i) for i in indices])))
        return [i for i, r in zip(indices, raw, strict=True) if r is None]

    def index_result(self, job_id: str) -> Op[dict[str, Any]]:
        (raw,) = yield _one(Call("hgetall", (keys.job_items(job_id),)))
        return index_result(raw)

    # -- run ------------------------------------------------------------------------------------
    def mark_running(self, job_id: str) -> Op[bool]:
        # One round trip for both (not a transaction: the open-jobs set is another slot).
        changed, _ = yield Batch(
            [
                ScriptCall(
                    "mark_running", [keys.job(job_id)], [JobStatus.queued.value, JobStatus.running.value, utcnow()]
                ),
                Call("zadd", (keys.OPEN_JOBS, {job_id: time.time()}), {"xx": True}),
            ]
        )
        return bool(changed)

    def touch(self, job_id: str) -> Op[None]:
        """The job shows life without recording anything (a long listing): not stalled."""
        yield _one(Call("zadd", (keys.OPEN_JOBS, {job_id: time.time()}), {"xx": True}))

    def count_attempt(self, job_id: str, what: str) -> Op[int]:
        """How many times this chunk or item has been started (this time included)."""
        key = keys.job_attempts(job_id)
        count, _ = yield Batch([Call("hincrby", (key, what, 1)), Call("expire", (key, self.job_ttl_s))], True)
        return int(count)

    def record_items(self, job_id: str, outcomes: list[Outcome]) -> Op[int]:
        """Returns 1 when every item of the job is now accounted for, 0 if not, -1 if the job is gone."""
        args: list[Any] = [self.job_ttl_s]
        for outcome, error in outcomes:
            args += [str(outcome.index), outcome.model_dump_json(), error.model_dump_json() if error else ""]
        job_keys = [keys.job(job_id), keys.job_items(job_id), keys.job_errors(job_id)]
        (complete,) = yield _one(ScriptCall("record_items", job_keys, args))
        if int(complete) == 0:
            yield from self.touch(job_id)
        return int(complete)

    # -- growing jobs (items listed by a worker) -------------------------------------------------
    def reserve_batch(self, job_id: str, source: int, number: int, size: int) -> Op[tuple[int, bool] | None]:
        """(first index, fresh) for batch `number` of `source`: fresh is False when a redelivered
        expansion reserved it before (same indices). None if the job is gone."""
        job_keys = [keys.job(job_id), keys.job_batches(job_id)]
        args = [f"{source}:{number}", size, self.job_ttl_s]
        (start,) = yield _one(ScriptCall("reserve_batch", job_keys, args))
        yield from self.touch(job_id)
        if start is None:
            return None
        start = int(start)
        return (start, True) if start >= 0 else (-start - 1, False)

    def add_inputs(self, job_id: str, first: int, inputs: list[JobInput]) -> Op[None]:
        mapping = {str(first + i): inp.model_dump_json() for i, inp in enumerate(inputs)}
        key = keys.job_inputs(job_id)
        yield Batch([Call("hset", (key,), {"mapping": mapping}), Call("expire", (key, self.job_ttl_s))])

    def source_finished(self, job_id: str, source: int) -> Op[bool]:
        (flag,) = yield _one(Call("hexists", (keys.job_batches(job_id), f"done:{source}")))
        return bool(flag)

    def source_done(self, job_id: str, source: int) -> Op[int]:
        """Returns 1 when this completes the job (then the caller finishes it)."""
        (complete,) = yield _one(ScriptCall("source_done", [keys.job(job_id), keys.job_batches(job_id)], [str(source)]))
        return int(complete)

    # -- finish ---------------------------------------------------------------------------------
    def finish(self, job_id: str, status: JobStatus, result: dict[str, Any]) -> Op[bool]:
        """Set the final status (first finisher wins) and wake every waiter. True if this call did."""
        args = [status.value, json.dumps(result), utcnow(), keys.job_done_channel(job_id), ANNOUNCE_MAX_BYTES]
        job_keys = [keys.job(job_id), keys.job_errors(job_id)]
        (out,) = yield _one(ScriptCall("finish_job", job_keys, [*args, *FINAL_STATUSES]))
        if not isinstance(out, list):  # gone: only the open entry may be left
            yield _one(Call("zrem", (keys.OPEN_JOBS, job_id)))
            return False
        won, owner, job_type, callback = out
        # The first finisher counts the job, with the last step below.
        counted = [Call("hincrby", (keys.JOB_COUNTS, f"{text(job_type)}:{status.value}", 1))] if int(won) == 1 else []
        # A rerun (redelivered finisher) does the steps outside the job's slot again: the first
        # finisher may have died before them.
        yield from self.after_finish(job_id, text(owner) or None, bool(int(callback)), counted)
        return int(won) == 1

    def after_finish(self, job_id: str, owner: str | None, callback: bool, also: Sequence[Call] = ()) -> Op[None]:
        """What a finished job changes outside its own slot, idempotently, the open entry last: a
        finisher that died before this is put right by the watchdog, which finds the job finished
        and still open. `also`: calls sent with that last step (not repeated by the repair)."""
        calls = []
        if callback:
            calls.append(Call("zadd", (keys.WEBHOOKS_DUE, {job_id: time.time()}), {"nx": True}))
        if owner:
            calls.append(Call("zrem", (keys.owner_open(owner), job_id)))
        if calls:  # before the open entry, which the watchdog's repair keys on: not in one pipeline
            yield Batch(calls)
        yield Batch([Call("zrem", (keys.OPEN_JOBS, job_id)), *also])


def _parse_input(index: int, raw: bytes | None) -> JobInput | ItemError:
    if raw is None:
        return ItemError(index=index, error="missing_input", detail="the job's record of this item is gone")
    try:
        return JobInput.model_validate_json(raw)
    except (ValidationError, ValueError, RecursionError) as exc:
        log.warning("item %d has an unreadable input record: %s", index, exc)
        return ItemError(index=index, error="invalid_input", detail=f"the item's record cannot be read: {exc}"[:500])
