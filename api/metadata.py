"""User metadata sent with an upload: a JSON object mapping file names to JSON objects.

It is stored in Redis with every image it is attached to, and one entry is copied onto every file
of that name (a 200 KB value on 100 files named alike stored 20 MB), so it is bounded per image
and per request. It is also bounded in depth: the worker's serialisers recurse, and ~210 levels
broke it; `json.loads` itself raises RecursionError on a few thousand levels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from shared.errors import PayloadTooLarge, SimsearchError


class InvalidMetadata(SimsearchError):
    status_code = 422
    code = "invalid_metadata"


class MetadataTooLarge(PayloadTooLarge):
    code = "metadata_too_large"


@dataclass(frozen=True)
class MetadataLimits:
    per_image: int
    per_request: int
    max_depth: int


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: JSON has no infinity, and Redis records must stay JSON
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def depth_of(value: Any, limit: int) -> int:
    """Nesting depth (an object or array counts 1 plus its deepest member), walked without
    recursion; stops as soon as it exceeds `limit`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            members: Any = node.values()
        elif isinstance(node, list):
            members = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((member, depth + 1) for member in members)
    return deepest


def stored_size(value: Any) -> int:
    """Bytes as stored (compact JSON, UTF-8). A lone surrogate (valid JSON escape, not UTF-8) cannot
    be stored: 422."""
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    except UnicodeEncodeError:
        raise InvalidMetadata("'metadata' holds text that is not valid Unicode (a lone surrogate)") from None


def load_json(raw: str, subject: str, max_depth: int, error: type[SimsearchError]) -> Any:
    """JSON text from a form field or a query parameter: finite numbers only, and every failure
    of `json.loads` (bad JSON, too deep, a huge integer) an `error` whose detail starts with
    `subject` ("'metadata' is", "filter:")."""
    try:
        return json.loads(raw, parse_float=_finite, parse_constant=_no_constants)
    except RecursionError:
        raise error(f"{subject} nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, and e.g. an integer of more than 4300 digits
        raise error(f"{subject} not valid JSON: {exc}") from exc


def parse_metadata(raw: str | None, limits: MetadataLimits) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if len(raw.encode()) > limits.per_request:
        raise MetadataTooLarge(f"'metadata' is over {limits.per_request} bytes")
    value = load_json(raw, "'metadata' is", limits.max_depth, InvalidMetadata)
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise InvalidMetadata("'metadata' must be a JSON object mapping file names to JSON objects")
    for name, meta in value.items():
        if depth_of(meta, limits.max_depth) > limits.max_depth:
            raise InvalidMetadata(f"metadata for {name!r} is nested deeper than {limits.max_depth} levels")
        if (size := stored_size(meta)) > limits.per_image:
            raise MetadataTooLarge(f"metadata for {name!r} is {size} bytes, over the {limits.per_image} per image")
    return value


def attach(names: list[tuple[str, str]], metadata: dict[str, dict[str, Any]], per_request: int) -> list[Any]:
    """Each file's metadata, by its name as sent or else its cleaned name; refuses the request when
    what would be stored for all its files together exceeds `per_request`."""
    attached, total = [], 0
    for sent, cleaned in names:
        meta = metadata.get(sent) or metadata.get(cleaned)
        if meta:
            total += stored_size(meta)
            if total > per_request:
                raise MetadataTooLarge(
                    f"the metadata attached to this request's files exceeds {per_request} bytes "
                    "(an entry is stored once per file of that name)"
                )
        attached.append(meta)
    return attached
