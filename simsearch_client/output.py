"""What the `simsearch` command prints: text for people on stdout, status and failures on stderr,
or JSON with --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any


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


def show(value: Any, as_json: bool, as_text: Callable[[Any], None]) -> None:
    """A command's answer: the raw JSON with --json, else `as_text` of it."""
    if as_json:
        print_json(value)
    else:
        as_text(value)


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


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


def print_batch_row(row: dict[str, Any], as_json: bool) -> None:
    """One query's answer of a batch search: a JSON line, or its best match tab-separated."""
    if as_json:
        out(json.dumps(row, ensure_ascii=False))
    elif row["matches"]:
        best = row["matches"][0]
        out(f"{row['query']}\t{best['similarity']:.4f}\t{best['filename']}\t{best['image_id']}")
    else:
        out(f"{row['query']}\t-\tno similar images")


def print_duplicates(result: dict[str, Any]) -> None:
    out(
        f"{plural(result['group_count'], 'group')} holding {result['images_in_groups']} of {result['images']} images"
        f" ({result['seconds']} s)"
    )
    for number, group in enumerate(result["groups"], 1):
        rows = [(m["image_id"], f"{m['similarity']:.4f}", m["filename"]) for m in group["members"]]
        out(f"group {number} ({group['size']} images)")
        out(table(["image_id", "similarity", "filename"], rows, right=(1,)))


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


def print_collections(collections: list[dict[str, Any]]) -> None:
    if not collections:
        out("no collections")
        return
    rows = [
        (c["name"], c["image_count"], c.get("model") or "-", c.get("dimension") or "-", c.get("created_at") or "-")
        for c in collections
    ]
    out(table(["name", "images", "model", "dimension", "created"], rows, right=(1, 3)))
