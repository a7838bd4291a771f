"""Uploading many files: chunks of files per request, several requests in flight, resumable.

Resuming needs no state on disk: ids come from the bytes, so a re-run asks the API which ids the
collection already holds and uploads only the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simsearch_client.client import SimsearchClient
from simsearch_client.files import Candidate, Discovery

# How long one progress poll may block: short enough that the progress bar moves while a chunk's
# job runs, long enough not to hammer the API (the long poll still returns at once when it ends).
PROGRESS_POLL_S = 1.0
JOB_TIMEOUT_S = 3600.0

Advance = Callable[[int], None]


@dataclass
class Plan:
    """What a run will do: upload `pending`, skip the images the collection already holds."""

    discovery: Discovery
    pending: list[Candidate]
    already_indexed: int


@dataclass
class UploadReport:
    uploaded: int = 0
    created: int = 0
    existing: int = 0  # the server already had them (indexed by someone else since the lookup)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, other: UploadReport) -> None:
        self.uploaded += other.uploaded
        self.created += other.created
        self.existing += other.existing
        self.failures.extend(other.failures)


class _Cancelled(Exception):
    """Raised inside a chunk's thread when another chunk failed or the user interrupted."""


def plan(client: SimsearchClient, collection: str, discovery: Discovery) -> Plan:
    existing = client.lookup(collection, discovery.image_ids) if discovery.images else set()
    pending = [c for c in discovery.images if c.image_id not in existing]
    return Plan(discovery, pending, len(discovery.images) - len(pending))


def chunked(items: Sequence[Candidate], size: int) -> list[Sequence[Candidate]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _read_files(chunk: Sequence[Candidate]) -> tuple[list[tuple[str, bytes]], list[Candidate], list[tuple[Path, str]]]:
    """Read the chunk's bytes now rather than at discovery, so only chunks in flight sit in memory."""
    files, kept, failures = [], [], []
    for candidate in chunk:
        try:
            files.append((candidate.path.name, candidate.path.read_bytes()))
            kept.append(candidate)
        except OSError as exc:
            failures.append((candidate.path, f"cannot read: {exc.strerror or exc}"))
    return files, kept, failures


def _job_report(job: dict[str, Any], sent: Sequence[Candidate]) -> UploadReport:
    """Map the job's per-item errors back to local paths (by upload index: names may repeat)."""
    result = job.get("result") or {}
    report = UploadReport(
        uploaded=len(sent), created=len(result.get("created", [])), existing=len(result.get("existing", []))
    )
    for error in job.get("errors", []):
        index = error.get("index")
        path = sent[index].path if isinstance(index, int) and 0 <= index < len(sent) else Path(error.get("filename"))
        report.failures.append((path, f"{error['error']}: {error['detail']}"))
    return report


class _ChunkUploader:
    """Uploads one chunk per call and follows its job, advancing the shared progress count."""

    def __init__(self, client: SimsearchClient, collection: str, advance: Advance, job_timeout: float) -> None:
        self.client = client
        self.collection = collection
        self.job_timeout = job_timeout
        self.stop = threading.Event()
        self._advance = advance
        self._lock = threading.Lock()  # tqdm's counter is not safe to bump from several threads

    def advance(self, n: int) -> None:
        with self._lock:
            self._advance(n)

    def __call__(self, chunk: Sequence[Candidate]) -> UploadReport:
        if self.stop.is_set():
            raise _Cancelled
        try:
            return self._upload(chunk)
        except _Cancelled:
            raise
        except BaseException:
            # Stop the other chunks from here, at once: the thread waiting on the futures may be
            # slow to wake (a busy machine) while this pool thread takes the next chunk.
            self.stop.set()
            raise

    def _upload(self, chunk: Sequence[Candidate]) -> UploadReport:
        files, sent, failures = _read_files(chunk)
        if not files:
            return UploadReport(failures=failures)
        accepted = self.client.index(self.collection, files)
        del files  # the bytes are on the server now; don't hold them while the job runs
        job = self.client.wait(
            accepted["job_id"], timeout=self.job_timeout, poll=PROGRESS_POLL_S, on_progress=self._follower()
        )
        report = _job_report(job, sent)
        report.failures.extend(failures)
        return report

    def _follower(self) -> Callable[[dict[str, Any]], None]:
        seen = 0

        def on_progress(job: dict[str, Any]) -> None:
            nonlocal seen
            if self.stop.is_set():
                raise _Cancelled
            done = job["progress"]["done"]
            if done > seen:
                self.advance(done - seen)
                seen = done

        return on_progress


def upload(
    client: SimsearchClient,
    collection: str,
    pending: Sequence[Candidate],
    chunk: int = 64,
    concurrency: int = 4,
    advance: Advance = lambda n: None,
    job_timeout: float = JOB_TIMEOUT_S,
) -> UploadReport:
    """Upload in chunks, `concurrency` requests (and their jobs) in flight at once.

    Waiting for a chunk's job before its thread takes the next chunk bounds how much the API holds
    in Redis for us. The first error (API, connection) stops the run and is raised: it is almost
    always one every chunk would hit (wrong URL, model mismatch), and a re-run resumes.
    """
    uploader = _ChunkUploader(client, collection, advance, job_timeout)
    report = UploadReport()
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="simsearch-upload") as pool:
        futures: list[Future[UploadReport]] = [pool.submit(uploader, c) for c in chunked(pending, max(1, chunk))]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                uploader.stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                # The error that stopped the run, not a chunk that found the run stopped.
                errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
                raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])  # type: ignore[misc]
            for future in futures:
                report.add(future.result())
        except BaseException:  # an error in a chunk, or Ctrl-C in this thread: stop the others
            uploader.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return report
