"""The `simsearch` command line: its options and subcommands (run by simsearch_client.cli)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from simsearch_client.files import IMAGE_EXTENSIONS

DEFAULT_URL = "http://localhost:8000"


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


def _add_duplicates(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("duplicates", parents=[common], help="group near-duplicate images of a collection")
    p.add_argument("collection", metavar="C")
    p.add_argument("--min-similarity", type=float, default=0.95, metavar="X", help="edge threshold (default 0.95)")
    p.add_argument("-k", type=positive_int, default=10, help="neighbours asked per image (default 10)")
    p.add_argument("--max-groups", type=positive_int, default=1000, metavar="N", help="groups listed (default 1000)")
    p.add_argument("--json", action="store_true", help="print the raw JSON result")


def _add_jobs(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("jobs", parents=[common], help="show a job")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--wait", type=float, default=0, metavar="S", help="wait up to S seconds for the job to end")
    p.add_argument("--json", action="store_true", help="print the raw JSON job")


def _add_collections(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("collections", parents=[common], help="list collections")
    p.add_argument("--json", action="store_true", help="print the raw JSON list")


def _add_export(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common], help="export a collection's embeddings")
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("--format", choices=["csv", "npy"], default="csv", help="csv, or npy: a zip of .npy + ids.csv")
    p.add_argument("-o", "--output", metavar="FILE", help="'-' for stdout; default: stdout (csv), COLLECTION.zip (npy)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simsearch", description="Command-line client for the simsearch API.")
    _connection_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_index, _add_import, _add_search, _add_duplicates, _add_jobs, _add_collections, _add_export):
        add(sub, common)
    return parser
