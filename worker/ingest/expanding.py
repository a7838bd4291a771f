"""Turn a job's sources -- an uploaded archive, an uploaded URL list, a bucket prefix -- into items.

A source is read as a stream and added to its job in batches: reserve the batch's indices (once:
a redelivered expansion gets the same ones back), store its bytes, record its inputs, queue its
chunks. Memory stays at one batch whatever the source's size. The job can only complete once
every source is done (`source_done`), so chunks that finish early never end it too soon.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.imaging import content_id
from shared.jobs.kinds import ArchiveSource, BucketSource, CollectionSource, SourceSpec, source_name
from shared.schemas import ItemError, JobInput
from shared.urlcheck import FetchError, check_url
from worker.context import JobContext
from worker.finishers import finish
from worker.ingest.archives import ArchiveLimits, members

log = logging.getLogger(__name__)

EXPAND_BATCH = 64  # items per reserved batch (two chunks of 32)
BATCH_BYTES = 64 << 20  # ... or fewer: a batch's bytes are held at once
MAX_URL_LINES = 1_000_000
MAX_LINE = 16 * 1024
Item = tuple[JobInput, bytes | None]  # the input, and the bytes to store for it (None: none)
SendChunks = Callable[[int, int], None]  # (first index, count): queue their index chunks


def _rejected(filename: str, code: str, detail: str) -> Item:
    error = ItemError(filename=filename, error=code, detail=detail)
    return JobInput(filename=filename, image_id="", size=0, rejected=error), None


def archive_items(path: Path, limits: ArchiveLimits) -> Iterator[Item]:
    seen = 0
    for member in members(path, limits):
        seen += 1
        if member.data is None:
            yield _rejected(member.name, member.error or "invalid_archive", member.detail)
        else:
            yield JobInput(filename=member.name, image_id=content_id(member.data), size=len(member.data)), member.data
    if not seen:
        yield _rejected("(archive)", "empty_archive", "the archive holds no files")


def url_lines(lines: Iterable[str], metadata_max_bytes: int) -> Iterator[Item]:
    """A URL per line, or `url,metadata-json` CSV rows; blank lines and `#` comments skipped."""
    count = 0
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#") or (number == 1 and text.lower().startswith("url,metadata")):
            continue
        count += 1
        if count > MAX_URL_LINES:
            yield _rejected(f"line {number}", "too_many_urls", f"a list holds at most {MAX_URL_LINES} URLs")
            return
        yield url_item(text, number, metadata_max_bytes)


def url_item(text: str, number: int, metadata_max_bytes: int) -> Item:
    name = f"line {number}"
    if len(text) > MAX_LINE:
        return _rejected(name, "invalid_url", f"the line is over {MAX_LINE} characters")
    row = next(csv.reader([text]), [])
    url = row[0].strip() if row else ""
    metadata = None
    if len(row) > 1:
        raw = ",".join(row[1:]).strip()
        try:
            metadata = json.loads(raw) if raw else None
        except ValueError:
            return _rejected(url or name, "invalid_metadata", "the metadata column is not JSON")
        if metadata is not None and not isinstance(metadata, dict):
            return _rejected(url or name, "invalid_metadata", "the metadata column must be a JSON object")
        if len(raw.encode()) > metadata_max_bytes:
            return _rejected(url or name, "invalid_metadata", f"metadata over {metadata_max_bytes} bytes")
    try:
        check_url(url)
    except FetchError as exc:
        return _rejected(url[:1024] or name, exc.code, exc.detail)
    return JobInput(filename=url[:1024], image_id="", size=0, url=url, metadata=metadata), None


def _batches(items: Iterable[Item], size: int, max_bytes: int = BATCH_BYTES) -> Iterator[list[Item]]:
    """Batches of at most `size` items and about `max_bytes` of bytes: the same boundaries on
    every run over the same source (a redelivered expansion meets its reservations again)."""
    batch: list[Item] = []
    held = 0
    for item in items:
        batch.append(item)
        held += len(item[1] or b"")
        if len(batch) >= size or held >= max_bytes:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def expand_source(ctx: JobContext, source: int, send_chunks: SendChunks, limits: ArchiveLimits, meta_max: int) -> None:
    """List the source into its job, then mark it done. Whatever goes wrong short of Redis
    itself, the source ends (the rest of it as one failed item): a job never waits forever."""
    spec = ctx.job.params.sources[source]
    if ctx.jobs.source_finished(ctx.job_id, source):  # a redelivered message of a finished expansion
        _end_source(ctx, source)
        return
    added = number = 0
    with tempfile.TemporaryDirectory(prefix="expand-") as tmp:
        try:
            for batch in _batches(_items(ctx, source, spec, Path(tmp), limits, meta_max), EXPAND_BATCH):
                if not _add_batch(ctx, source, number, batch, send_chunks):
                    return  # the job expired meanwhile
                number, added = number + 1, added + len(batch)
        except (RedisConnectionError, RedisTimeoutError, OperationalError):
            raise  # Redis or the broker is away: retried, and the reservations made so far are found again
        except Exception as exc:  # a reader bug, or the soft time limit
            log.exception("expanding source %d of job %s stopped", source, ctx.job_id)
            code = "expand_timeout" if isinstance(exc, SoftTimeLimitExceeded) else "expand_failed"
            name = source_name(spec)
            # A fresh batch number: the one that failed may hold a reservation already.
            if not _add_batch(ctx, source, number + 1, [_rejected(name, code, repr(exc)[:300])], send_chunks):
                return
    log.info("expanded a source", extra={"job_id": ctx.job_id, "kind": spec.kind, "items": added})
    _end_source(ctx, source)


def _end_source(ctx: JobContext, source: int) -> None:
    if ctx.jobs.source_done(ctx.job_id, source) == 1:
        # The source's end completed the job (its chunks were all answered first): end it as
        # the kind of job it is -- a growing job is an import or a whole-collection batch search.
        finish(ctx)
    ctx.store.blobs.delete([keys.source_blob(ctx.job_id, source)])


def _items(
    ctx: JobContext, source: int, spec: SourceSpec, tmp: Path, limits: ArchiveLimits, meta_max: int
) -> Iterator[Item]:
    path = tmp / "source"
    if isinstance(spec, CollectionSource):  # a batch search of every image against the collection
        limit = spec.limit
        _listing(ctx, source, path, lambda: ((i, 0) for i in islice(ctx.store.vector_ids(ctx.collection), limit)))
        with path.open("r", encoding="utf-8") as fh:
            for line in fh:
                image_id = line.split("\t", 1)[0]
                yield JobInput(filename=image_id, image_id=image_id, size=0, stored=True), None
        return
    if isinstance(spec, BucketSource):
        url = spec.url
        try:
            _listing(ctx, source, path, lambda: ctx.sources.buckets.list_images(url))  # type: ignore[union-attr]
        except FetchError as exc:
            yield _rejected(url, exc.code, exc.detail)
            return
        with path.open("r", encoding="utf-8") as fh:
            for line in fh:
                url, size = line.rstrip("\n").rsplit("\t", 1)
                yield JobInput(filename=url.split("/", 3)[-1][:1024], image_id="", size=int(size), url=url), None
        return
    if not ctx.store.blobs.get_file(keys.source_blob(ctx.job_id, source), path):
        yield _rejected(source_name(spec), "upload_expired", "the uploaded file is gone")
        return
    if isinstance(spec, ArchiveSource):
        yield from archive_items(path, limits)
    else:
        with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
            yield from url_lines(_bounded_lines(fh), meta_max)


def _listing(ctx: JobContext, source: int, path: Path, entries: Callable[[], Iterable[tuple[str, int]]]) -> None:
    """`name<TAB>size` lines in `path` (a bucket's image objects, a collection's ids). Listed
    once, then kept as the source's blob: a redelivered expansion walks the same list even if
    the bucket or the collection changed meanwhile."""
    key = keys.source_blob(ctx.job_id, source)
    if ctx.store.blobs.get_file(key, path):
        return
    with path.open("w", encoding="utf-8") as out:
        for n, (name, size) in enumerate(entries(), 1):
            out.write(f"{name}\t{size}\n")
            if n % 10_000 == 0:
                ctx.jobs.touch(ctx.job_id)  # a million-object listing is long, not stalled (worker/upkeep/watchdog.py)
    ctx.store.blobs.put_file(key, path)


def _bounded_lines(fh: io.TextIOBase) -> Iterator[str]:
    """Lines, none held longer than MAX_LINE + 1 characters (a file without newlines is not read whole)."""
    while line := fh.readline(MAX_LINE + 1):
        if len(line) > MAX_LINE and not line.endswith("\n"):
            while (rest := fh.readline(MAX_LINE + 1)) and not rest.endswith("\n"):
                pass  # skip the remainder of an over-long line
        yield line


def _add_batch(ctx: JobContext, source: int, number: int, batch: list[Item], send_chunks: SendChunks) -> bool:
    reserved = ctx.jobs.reserve_batch(ctx.job_id, source, number, len(batch))
    if reserved is None:
        return False
    first, fresh = reserved
    indices = list(range(first, first + len(batch)))
    # A batch reserved by an earlier run of this expansion: only what is not recorded yet is owed.
    todo = set(indices if fresh else ctx.jobs.unrecorded(ctx.job_id, indices))
    if not todo:
        return True
    inputs = [inp for inp, _ in batch]
    try:
        owed = zip(indices, batch, strict=True)
        ctx.store.blobs.put_many({keys.upload_blob(ctx.job_id, i): data for i, (_, data) in owed if data and i in todo})
    except (RedisConnectionError, RedisTimeoutError):
        raise
    except Exception as exc:  # the blob store refused: this batch's items fail, its indices are still owed
        log.exception("storing batch %d of source %d of job %s failed", number, source, ctx.job_id)
        error = f"storing the bytes failed: {exc!r}"[:300]
        inputs = [_rejected(inp.filename, "store_failed", error)[0] for inp in inputs]
    ctx.jobs.add_inputs(ctx.job_id, first, inputs)
    send_chunks(first, len(batch))
    return True
