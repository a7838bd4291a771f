"""`simsearch`: index folders of images, search, follow jobs, list and export collections."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from simsearch_client.client import (
    FINAL_STATUSES,
    MAX_LONG_POLL,
    SimsearchClient,
    SimsearchConnectionError,
    SimsearchError,
    format_detail,
)
from simsearch_client.files import IMAGE_EXTENSIONS, discover
from simsearch_client.indexer import Plan, UploadReport, plan, upload

DEFAULT_URL = "http://localhost:8000"
EXIT_OK, EXIT_FAILED_FILES, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

Handler = Callable[[SimsearchClient, argparse.Namespace], int]


# -- output helpers ------------------------------------------------------------------------------


def out(text: str = "") -> None:
    print(text, flush=True)


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain aligned text table; columns whose index is in `right` are right-aligned (numbers)."""
    cells = [list(map(str, headers)), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return "\n".join(line(row) for row in cells)


def print_json(value: Any) -> None:
    out(json.dumps(value, indent=2, ensure_ascii=False))


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


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


def print_matches(result: dict[str, Any]) -> None:
    matches = result.get("matches", [])
    if not matches:
        out(result.get("message") or "No similar images found.")
        return
    rows = [(i, f"{m['similarity']:.4f}", m["filename"], m["image_id"]) for i, m in enumerate(matches, 1)]
    out(table(["rank", "similarity", "filename", "image_id"], rows, right=(0, 1)))
    footer = f"{plural(len(matches), 'match', 'matches')} among {result.get('collection_size', '?')} images"
    if result.get("filter_matches") is not None:
        footer += f" ({result['filter_matches']} passed the filter)"
    if result.get("query_cluster") is not None:
        footer += f"; query nearest cluster {result['query_cluster']}"
    if threshold := result.get("threshold"):
        origin = {"collection": "calibrated on the collection", "model": "the model's floor"}.get(threshold["source"])
        footer += f"; similarity >= {threshold['value']:.3f}" + (f" ({origin})" if origin else "")
    out(footer)


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
            if row is None:
                continue
            if args.json:
                out(json.dumps(row, ensure_ascii=False))  # JSON lines: one row per query
            elif row["matches"]:
                best = row["matches"][0]
                out(f"{row['query']}\t{best['similarity']:.4f}\t{best['filename']}\t{best['image_id']}")
            else:
                out(f"{row['query']}\t-\tno similar images")
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
    if args.json:
        print_json(result)
    else:
        print_matches(result)
    return EXIT_OK


def cmd_duplicates(client: SimsearchClient, args: argparse.Namespace) -> int:
    err(f"finding near-duplicates in {args.collection} (min similarity {args.min_similarity})...")
    result = client.duplicates(args.collection, args.min_similarity, args.k, args.max_groups)
    if args.json:
        print_json(result)
        return EXIT_OK
    out(
        f"{plural(result['group_count'], 'group')} holding {result['images_in_groups']} of {result['images']} images"
        f" ({result['seconds']} s)"
    )
    for number, group in enumerate(result["groups"], 1):
        rows = [(m["image_id"], f"{m['similarity']:.4f}", m["filename"]) for m in group["members"]]
        out(f"group {number} ({group['size']} images)")
        out(table(["image_id", "similarity", "filename"], rows, right=(1,)))
    return EXIT_OK


# -- jobs ----------------------------------------------------------------------------------------


def wait_for_job(client: SimsearchClient, job_id: str, seconds: float) -> dict[str, Any]:
    """The job once it ends, or its state after `seconds` (not an error: the caller asked to look)."""
    deadline = time.monotonic() + seconds
    job = client.job(job_id, wait=min(seconds, MAX_LONG_POLL))
    while job["status"] not in FINAL_STATUSES and (remaining := deadline - time.monotonic()) > 0:
        job = client.job(job_id, wait=min(remaining, MAX_LONG_POLL))
    return job


def print_job(job: dict[str, Any]) -> None:
    progress = job["progress"]
    fields = [
        ("job", job["job_id"]),
        ("type", job["type"]),
        ("status", job["status"]),
        ("collection", job["collection"]),
        ("progress", f"{progress['done']}/{progress['total']} done, {progress['failed']} failed"),
        ("created", job.get("created_at")),
        ("started", job.get("started_at")),
        ("finished", job.get("finished_at")),
    ]
    for name, value in fields:
        out(f"{name:<11} {value if value is not None else '-'}")
    result = job.get("result")
    if result and job["type"] == "index":
        out(f"result      {len(result.get('created', []))} created, {len(result.get('existing', []))} existing")
    elif result and job["type"] == "search" and "matches" in result:
        print_matches(result)
    elif result:
        out("result      " + json.dumps(result, ensure_ascii=False))
    for e in job.get("errors", []):
        err(f"  [{e.get('index')}] {e.get('filename') or e.get('image_id') or ''}: {e['error']}: {e['detail']}")


def cmd_jobs(client: SimsearchClient, args: argparse.Namespace) -> int:
    job = wait_for_job(client, args.job_id, args.wait) if args.wait > 0 else client.job(args.job_id)
    if args.json:
        print_json(job)
    else:
        print_job(job)
    return EXIT_OK


# -- collections and export ----------------------------------------------------------------------


def cmd_collections(client: SimsearchClient, args: argparse.Namespace) -> int:
    collections = client.collections()
    if args.json:
        print_json(collections)
    elif not collections:
        out("no collections")
    else:
        rows = [
            (c["name"], c["image_count"], c.get("model") or "-", c.get("dimension") or "-", c.get("created_at") or "-")
            for c in collections
        ]
        out(table(["name", "images", "model", "dimension", "created"], rows, right=(1, 3)))
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


# -- argument parsing ----------------------------------------------------------------------------


def _connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The same options on the main parser (with the defaults) and on every subcommand (without),
    so `simsearch --url X index ...` and `simsearch index ... --url X` both work."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    env_url = os.environ.get("SIMSEARCH_URL") or DEFAULT_URL
    parser.add_argument(
        "--url", default=default(env_url), help=f"API base URL (env SIMSEARCH_URL; default {DEFAULT_URL})"
    )
    parser.add_argument(
        "--api-key",
        default=default(os.environ.get("SIMSEARCH_API_KEY")),
        help="sent as 'Authorization: Bearer KEY' (env SIMSEARCH_API_KEY)",
    )
    parser.add_argument(
        "--timeout", type=float, default=default(60.0), metavar="S", help="HTTP timeout in seconds (default 60)"
    )


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_index(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "index",
        parents=[common],
        help="index image files and folders (resumable)",
        description=(
            "Index images into a collection. Folders are searched recursively for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} files; files whose content is not an image are reported "
            "as failed. Images the collection already holds (same bytes) are skipped without being uploaded, "
            "so re-running after an interruption resumes. Exit status: 0 all indexed, 1 some files failed, "
            "2 error."
        ),
    )
    p.add_argument(
        "paths", nargs="+", metavar="DIR|FILE", help="image files, folders to search recursively, or archives"
    )
    p.add_argument(
        "--collection", "-c", required=True, metavar="C", help="collection name (created by its first image)"
    )
    p.add_argument("--chunk", type=positive_int, default=64, metavar="N", help="files per upload request (default 64)")
    p.add_argument(
        "--concurrency", type=positive_int, default=4, metavar="N", help="requests in flight at once (default 4)"
    )
    p.set_defaults(handler=cmd_index)


def _add_import(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "import",
        parents=[common],
        help="index images from a URL list or a bucket (fetched by the server)",
        description="The server fetches the images (public addresses only) and reports per-URL failures.",
    )
    p.add_argument("source", nargs="?", metavar="s3://BUCKET/PREFIX", help="a bucket prefix the server may read")
    p.add_argument("--urls", metavar="FILE", help="a text/CSV file: one URL per line, or url,metadata-json")
    p.add_argument("--collection", "-c", required=True, metavar="C")
    p.add_argument("--callback-url", metavar="URL", help="POSTed the finished job (signed)")
    p.set_defaults(handler=cmd_import)


def _add_search(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("search", parents=[common], help="find the images most similar to an image")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("image", nargs="?", metavar="IMAGE", help="query image file")
    query.add_argument("--id", dest="image_id", help="search with an image already in the collection")
    query.add_argument("--image-url", dest="query_url", help="search with an image the server fetches")
    query.add_argument("--like", nargs="+", metavar="ID", help="more like these stored images (with --unlike)")
    query.add_argument("--batch", metavar="DIR", help="every image of a folder as a query (one job per 1,000)")
    p.add_argument("--unlike", nargs="+", default=[], metavar="ID", help="less like these stored images")
    p.add_argument("--collection", "-c", required=True, metavar="C")
    p.add_argument("-k", type=positive_int, default=10, help="number of matches (default 10)")
    p.add_argument(
        "--min-similarity",
        type=float,
        metavar="X",
        help="drop matches below this cosine similarity (default: the collection's calibrated threshold; 0: none)",
    )
    p.add_argument("--cluster", type=int, metavar="N", help="only matches from this cluster")
    p.add_argument(
        "--filter",
        type=json_object,
        metavar="JSON",
        help='only matches whose metadata passes it, e.g. \'{"label": "cat", "year": {"$gte": 2020}}\'',
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON result")
    p.set_defaults(handler=cmd_search)


def _add_duplicates(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("duplicates", parents=[common], help="group near-duplicate images of a collection")
    p.add_argument("collection", metavar="C")
    p.add_argument("--min-similarity", type=float, default=0.95, metavar="X", help="edge threshold (default 0.95)")
    p.add_argument("-k", type=positive_int, default=10, help="neighbours asked per image (default 10)")
    p.add_argument("--max-groups", type=positive_int, default=1000, metavar="N", help="groups listed (default 1000)")
    p.add_argument("--json", action="store_true", help="print the raw JSON result")
    p.set_defaults(handler=cmd_duplicates)


def _add_jobs(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("jobs", parents=[common], help="show a job")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--wait", type=float, default=0, metavar="S", help="wait up to S seconds for the job to end")
    p.add_argument("--json", action="store_true", help="print the raw JSON job")
    p.set_defaults(handler=cmd_jobs)


def _add_collections(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("collections", parents=[common], help="list collections")
    p.add_argument("--json", action="store_true", help="print the raw JSON list")
    p.set_defaults(handler=cmd_collections)


def _add_export(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common], help="export a collection's embeddings")
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("--format", choices=["csv", "npy"], default="csv", help="csv, or npy: a zip of .npy + ids.csv")
    p.add_argument("-o", "--output", metavar="FILE", help="'-' for stdout; default: stdout (csv), COLLECTION.zip (npy)")
    p.set_defaults(handler=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simsearch", description="Command-line client for the simsearch API.")
    _connection_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_index, _add_import, _add_search, _add_duplicates, _add_jobs, _add_collections, _add_export):
        add(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
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
