"""`simsearch`: index folders of images, search, follow jobs, list and export collections."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from simsearch_client.arguments import build_parser
from simsearch_client.client import (
    FINAL_STATUSES,
    MAX_LONG_POLL,
    SimsearchClient,
    SimsearchConnectionError,
    SimsearchError,
    format_detail,
)
from simsearch_client.files import discover
from simsearch_client.indexer import Plan, UploadReport, plan, upload
from simsearch_client.output import (
    err,
    out,
    plural,
    print_batch_row,
    print_collections,
    print_duplicates,
    print_job,
    print_matches,
    show,
)

EXIT_OK, EXIT_FAILED_FILES, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

Handler = Callable[[SimsearchClient, argparse.Namespace], int]


# -- index ---------------------------------------------------------------------------------------


def _print_plan(p: Plan, chunk: int) -> None:
    d = p.discovery
    notes = []
    if d.ignored:
        notes.append(f"ignored {plural(len(d.ignored), 'file')} without an image extension")
    if d.rejected:
        notes.append(f"{plural(len(d.rejected), 'file')} with an image extension but not image content")
    if d.duplicates:
        notes.append(f"{plural(len(d.duplicates), 'duplicate')} of other files")
    out(f"found {plural(len(d.images), 'image')}" + (f" ({'; '.join(notes)})" if notes else ""))
    requests = -(-len(p.pending) // chunk)
    out(f"skipped {p.already_indexed} already indexed; uploading {len(p.pending)} in {plural(requests, 'request')}")


def _print_index_summary(report: UploadReport, failures: list[tuple[Path, str]]) -> None:
    out(
        f"done: {report.created} new, {report.existing} already present on the server, "
        f"{plural(len(failures), 'file')} failed"
    )
    if failures:
        err("failed files:")
        for path, reason in failures:
            err(f"  {path}: {reason}")


def _upload_with_progress(client: SimsearchClient, args: argparse.Namespace, p: Plan) -> UploadReport:
    from tqdm import tqdm  # the CLI's only extra dependency; the client class does not need it

    # disable=None: a bar on a terminal, nothing in logs and pipes.
    with tqdm(total=len(p.pending), unit="img", desc="indexing", file=sys.stderr, disable=None) as bar:
        return upload(client, args.collection, p.pending, args.chunk, args.concurrency, advance=bar.update)


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")


def _index_summary(job: dict[str, Any]) -> str:
    result = job.get("result") or {}
    return (
        f"{job['status']}: {len(result.get('created', []))} new, {len(result.get('existing', []))} already present, "
        f"{plural(job['progress']['failed'], 'item')} failed (job {job['job_id']})"
    )


def _search_summary(job: dict[str, Any]) -> str:
    queries, failed = plural(job["progress"]["total"], "query", "queries"), job["progress"]["failed"]
    return f"{job['status']}: {queries}, {failed} failed (job {job['job_id']})"


def follow_job(
    client: SimsearchClient,
    accepted: dict[str, Any],
    desc: str,
    summary: Callable[[dict[str, Any]], str] = _index_summary,
    say: Callable[[str], None] = out,
) -> dict[str, Any]:
    """Follow a server-side job with a progress bar whose total grows as the server lists items
    (archives, URL files, buckets); `say` its summary, failures to stderr."""
    from tqdm import tqdm

    with tqdm(total=accepted.get("total") or None, unit="img", desc=desc, file=sys.stderr, disable=None) as bar:

        def advance(job: dict[str, Any]) -> None:
            progress = job["progress"]
            bar.total = max(progress["total"], 1)
            bar.update(progress["done"] - bar.n)

        job = client.wait(accepted["job_id"], timeout=7 * 24 * 3600, poll=2, on_progress=advance)
    say(summary(job))
    for e in job.get("errors", [])[:50]:
        err(f"  {e.get('filename') or e.get('index')}: {e['error']}: {e['detail']}")
    return job


def cmd_index(client: SimsearchClient, args: argparse.Namespace) -> int:
    archives = [p for p in args.paths if Path(p).is_file() and p.lower().endswith(ARCHIVE_SUFFIXES)]
    failed = False
    for archive in archives:  # expanded by the server: members are items, named by their path
        job = follow_job(client, client.index_archive(args.collection, archive), Path(archive).name)
        failed = failed or job["progress"]["failed"] > 0
    args.paths = [p for p in args.paths if p not in archives]
    if not args.paths:
        return EXIT_FAILED_FILES if failed else EXIT_OK
    discovery = discover(args.paths)
    p = plan(client, args.collection, discovery)
    _print_plan(p, args.chunk)
    report = _upload_with_progress(client, args, p) if p.pending else UploadReport()
    failures = [*discovery.rejected, *report.failures]
    _print_index_summary(report, failures)
    return EXIT_FAILED_FILES if failures or failed else EXIT_OK


def cmd_import(client: SimsearchClient, args: argparse.Namespace) -> int:
    if args.urls:
        accepted = client.import_urls(args.collection, args.urls, callback_url=args.callback_url)
    elif args.source and args.source.startswith("s3://"):
        accepted = client.import_bucket(args.collection, args.source, callback_url=args.callback_url)
    else:
        err("error: give --urls FILE or an s3://bucket/prefix")
        return EXIT_ERROR
    job = follow_job(client, accepted, "importing")
    return EXIT_FAILED_FILES if job["progress"]["failed"] else EXIT_OK


# -- search --------------------------------------------------------------------------------------

BATCH_QUERIES = 1000


def _search_batch(client: SimsearchClient, args: argparse.Namespace) -> int:
    images = discover([args.batch]).images
    for start in range(0, len(images), BATCH_QUERIES):
        group = images[start : start + BATCH_QUERIES]
        queries = [(str(c.path.relative_to(args.batch)), c.path.read_bytes()) for c in group]
        accepted = client.search_batch(
            args.collection, queries, k=args.k, min_similarity=args.min_similarity, filter=args.filter
        )
        # Status on stderr: stdout carries only the rows (JSON lines with --json).
        follow_job(client, accepted, "searching", _search_summary, err)
        for row in client.batch_results(accepted["job_id"]):
            if row is not None:
                print_batch_row(row, args.json)
    return EXIT_OK


def cmd_search(client: SimsearchClient, args: argparse.Namespace) -> int:
    if args.batch:
        return _search_batch(client, args)
    options = {"k": args.k, "min_similarity": args.min_similarity, "cluster": args.cluster, "filter": args.filter}
    if args.image_id:
        result = client.search_by_id(args.collection, args.image_id, **options)
    elif args.query_url:
        result = client.search_by_url(args.collection, args.query_url, **options)
    elif args.like:
        result = client.search_examples(args.collection, args.like, args.unlike, **options)
    else:
        result = client.search(args.collection, Path(args.image), **options)
    show(result, args.json, print_matches)
    return EXIT_OK


def cmd_duplicates(client: SimsearchClient, args: argparse.Namespace) -> int:
    err(f"finding near-duplicates in {args.collection} (min similarity {args.min_similarity})...")
    show(client.duplicates(args.collection, args.min_similarity, args.k, args.max_groups), args.json, print_duplicates)
    return EXIT_OK


# -- jobs ----------------------------------------------------------------------------------------


def wait_for_job(client: SimsearchClient, job_id: str, seconds: float) -> dict[str, Any]:
    """The job once it ends, or its state after `seconds` (not an error: the caller asked to look)."""
    deadline = time.monotonic() + seconds
    job = client.job(job_id, wait=min(seconds, MAX_LONG_POLL))
    while job["status"] not in FINAL_STATUSES and (remaining := deadline - time.monotonic()) > 0:
        job = client.job(job_id, wait=min(remaining, MAX_LONG_POLL))
    return job


def cmd_jobs(client: SimsearchClient, args: argparse.Namespace) -> int:
    job = wait_for_job(client, args.job_id, args.wait) if args.wait > 0 else client.job(args.job_id)
    show(job, args.json, print_job)
    return EXIT_OK


# -- collections and export ----------------------------------------------------------------------


def cmd_collections(client: SimsearchClient, args: argparse.Namespace) -> int:
    show(client.collections(), args.json, print_collections)
    return EXIT_OK


def _export_to_stdout(client: SimsearchClient, args: argparse.Namespace) -> int:
    sys.stdout.flush()  # text already printed must come before the bytes we write underneath it
    stream: IO[bytes] = sys.stdout.buffer
    written = client.export(args.collection, args.format, stream)
    stream.flush()
    return written


def _export_to_file(client: SimsearchClient, args: argparse.Namespace, dest: Path) -> int:
    # Write beside the destination and rename at the end: an error or Ctrl-C never leaves a
    # truncated export under the real name.
    partial = dest.with_name(dest.name + ".part")
    try:
        with partial.open("wb") as fh:
            written = client.export(args.collection, args.format, fh)
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
    return written


def cmd_export(client: SimsearchClient, args: argparse.Namespace) -> int:
    output = args.output or ("-" if args.format == "csv" else f"{args.collection}.zip")
    if output == "-":
        _export_to_stdout(client, args)
    else:
        written = _export_to_file(client, args, Path(output))
        err(f"wrote {written} bytes to {output}")
    return EXIT_OK


# -- running a command ---------------------------------------------------------------------------

COMMANDS: dict[str, Handler] = {
    "index": cmd_index,
    "import": cmd_import,
    "search": cmd_search,
    "duplicates": cmd_duplicates,
    "jobs": cmd_jobs,
    "collections": cmd_collections,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command]
    try:
        with SimsearchClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            return handler(client, args)
    except SimsearchConnectionError as exc:
        err(f"error: {exc.detail} (set --url or SIMSEARCH_URL)")
    except SimsearchError as exc:
        err(f"error: {exc.code}: {format_detail(exc.detail)}")
    except OSError as exc:  # a missing or unreadable local file
        err(f"error: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"error: {exc}")
    except KeyboardInterrupt:
        err("interrupted (re-run the same command to resume an index)")
        return EXIT_INTERRUPTED
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
