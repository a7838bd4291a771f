"""No job stays `running` forever, whatever was lost.

Tasks are idempotent and their messages are redelivered when a worker dies, and a task that loses
Redis waits for it (worker/upkeep/outages.py); still, a message can be lost outright (Redis restored from
an older file, a broker key deleted, a bug). Every open job is in `ss:jobs:open` with the time it
last showed life. A job quiet for `stall_s` -- longer than any task may run, so never one a live
worker is still on -- gets its unfinished work sent again: the chunks of its unrecorded items, its
unlisted sources, or its one task. After `max_redrives` sends without life the rest of its items
fail with `work_lost` and the job ends. One worker at a time runs a pass (a Redis lock).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from shared import keys
from shared.jobs import Jobs, final_status
from shared.jobs.kinds import KINDS
from shared.logs import RepeatedFailure
from shared.queueing import (
    EXPAND_TASK,
    INDEX_QUEUE,
)
from shared.schemas import ItemError, ItemOutcome, ItemStatus, JobStatus, JobType, JobView

log = logging.getLogger(__name__)

Send = Callable[[str, list, str], None]  # (task name, args, queue)
SCAN = 10_000  # item records read at a time when looking for the unrecorded ones


@dataclass(frozen=True)
class WatchdogPolicy:
    stall_s: float  # quiet this long: re-drive (keep it above the task time limit)
    max_redrives: int = 3
    chunk: int = 32


def sweep(client: redis.Redis, jobs: Jobs, send: Send, policy: WatchdogPolicy, now: float | None = None) -> int:
    """One pass: re-drive (or end) every open job quiet for `stall_s`. Returns how many it touched."""
    now = time.time() if now is None else now
    touched = 0
    for raw in client.zrangebyscore(keys.OPEN_JOBS, "-inf", now - policy.stall_s, start=0, num=100):
        job_id = raw.decode() if isinstance(raw, bytes) else raw
        try:
            touched += _sweep_one(client, jobs, send, policy, job_id, now)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception:  # one unreadable job must not stop the pass for every other
            log.exception("watchdog: job %s could not be re-driven; trying it again next pass", job_id)
            client.zadd(keys.OPEN_JOBS, {job_id: now}, xx=True)
    return touched


def _sweep_one(client: redis.Redis, jobs: Jobs, send: Send, policy: WatchdogPolicy, job_id: str, now: float) -> int:
    view = jobs.get(job_id)
    if view is None:  # expired
        client.zrem(keys.OPEN_JOBS, job_id)
        return 0
    if view.status.final:  # its finisher died before the steps outside the job's slot: do them
        owner, callback = client.hmget(keys.job(job_id), ["owner", "callback_status"])
        jobs.after_finish(job_id, owner.decode() if owner else None, callback == b"pending")
        return 0
    redrives = int(client.hincrby(keys.job(job_id), "redrives", 1))
    if redrives > policy.max_redrives and view.type is not JobType.reembed:
        give_up(client, jobs, view, policy)
    else:
        log.warning("job %s quiet for %.0f s: sending its unfinished work again (%d)", job_id, policy.stall_s, redrives)
        redrive(client, jobs, view, send, policy.chunk)
        client.zadd(keys.OPEN_JOBS, {job_id: now}, xx=True)
    return 1


def unrecorded(jobs: Jobs, view: JobView) -> list[int]:
    out: list[int] = []
    for start in range(0, view.progress.total, SCAN):
        out += jobs.unrecorded(view.job_id, list(range(start, min(start + SCAN, view.progress.total))))
    return out


def open_sources(client: redis.Redis, view: JobView, jobs: Jobs) -> list[int]:
    """The job's sources (archives, URL files, buckets, a collection) not yet fully listed."""
    # The stored params as they are: a record whose params no longer fit its kind's model must
    # still be driven to an end here.
    raw = client.hget(keys.job(view.job_id), "params")
    count = len(json.loads(raw or "{}").get("sources") or [])
    done = client.hkeys(keys.job_batches(view.job_id))
    finished = {int(k.split(b":", 1)[1]) for k in done if k.startswith(b"done:")}
    return [s for s in range(count) if s not in finished]


def redrive(client: redis.Redis, jobs: Jobs, view: JobView, send: Send, chunk: int) -> None:
    """Send the job's unfinished work again; every task is idempotent, so work that was only
    slow, not lost, is done once all the same."""
    job_id, collection, kind = view.job_id, view.collection, KINDS[view.type]
    if not kind.chunked:
        send(kind.task, [job_id, collection], kind.queue)
        return
    for source in open_sources(client, view, jobs):
        send(EXPAND_TASK, [job_id, collection, source], INDEX_QUEUE)
    todo = unrecorded(jobs, view)
    for start in range(0, len(todo), chunk):
        send(kind.task, [job_id, collection, todo[start : start + chunk]], kind.queue)


def give_up(client: redis.Redis, jobs: Jobs, view: JobView, policy: WatchdogPolicy) -> None:
    """Fail what is left with `work_lost` and end the job as its kind ends."""
    job_id = view.job_id
    detail = f"no worker made progress on it for {policy.stall_s:.0f} s after {policy.max_redrives} re-sends"
    log.error("job %s: %s; failing the rest of it", job_id, detail)
    todo = unrecorded(jobs, view)
    inputs = jobs.inputs(job_id, todo) if todo else []
    outcomes = []
    for index, inp in zip(todo, inputs, strict=True):
        name = inp.filename if not isinstance(inp, ItemError) else ""
        image_id = inp.image_id if not isinstance(inp, ItemError) else ""
        outcome = ItemOutcome(index=index, filename=name, image_id=image_id, status=ItemStatus.failed)
        outcomes.append((outcome, ItemError(index=index, filename=name, error="work_lost", detail=detail)))
    if outcomes:
        jobs.record_items(job_id, outcomes)
    for source in open_sources(client, view, jobs):
        jobs.source_done(job_id, source)
    total, failures = jobs.counts(job_id)
    if view.type is JobType.batch_search:
        result: dict = {"queries": total, "failed": failures, "results_url": f"/v1/jobs/{job_id}/results"}
    elif view.type is JobType.index:
        result = jobs.index_result(job_id)
    else:
        result = {"error": "work_lost", "detail": detail}
    status = final_status(total, failures) if KINDS[view.type].chunked else JobStatus.failed
    jobs.finish(job_id, status, result)


class Watchdog(threading.Thread):
    """A pass every `interval_s` in the worker's main process, one worker at a time."""

    def __init__(self, client: redis.Redis, jobs: Jobs, send: Send, policy: WatchdogPolicy, interval_s: float) -> None:
        super().__init__(name="simsearch-watchdog", daemon=True)
        self.client, self.jobs, self.send, self.policy, self.interval_s = client, jobs, send, policy, interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        failures = RepeatedFailure(log, "the job watchdog")
        while not self._stopped.wait(self.interval_s):
            try:
                if self.client.set(keys.WATCHDOG_LOCK, "1", nx=True, px=int(self.interval_s * 900)):
                    sweep(self.client, self.jobs, self.send, self.policy)
            except Exception as exc:  # the thread must outlive Redis outages and bugs alike
                failures.failed(exc)
            else:
                failures.succeeded()

    def stop(self) -> None:
        self._stopped.set()
