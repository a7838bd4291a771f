"""The metadata filter language: a small JSON dialect (MongoDB's and Chroma's operators).

    {"label": "cat"}                               equality (shorthand for {"label": {"$eq": "cat"}})
    {"label": {"$in": ["cat", "dog"]}}             one of ($nin: none of; $ne: not equal)
    {"year": {"$gte": 2020, "$lt": 2024}}          ranges ($gt $gte $lt $lte), numbers or strings
    {"gps": {"$exists": true}}                     the field is present (any value, null included)
    {"$or": [{"label": "cat"}, {"score": {"$gt": 0.9}}]}  and $and; several keys in one object AND
    {"exif.iso": 100}                              a dotted path reaches into nested objects

A field holding a list matches when any element does (`{"tags": "outdoor"}`). Comparisons are
typed: 1 equals 1.0 but not "1" or true, and a string bound never matches a number. $ne and $nin
also match images without the field. `parse` validates a filter and names the offending field in
its error (the API's 422); `matches` is the reference evaluation of one image's metadata; workers
evaluate the same semantics over columns (worker/search/metadata_index.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shared.errors import SimsearchError

MAX_NODES = 256
MAX_DEPTH = 8
MAX_IN = 1000
MAX_PATH = 256
MAX_INT = 2**63
Scalar = str | int | float | bool
RANGES = ("$gt", "$gte", "$lt", "$lte")
OPERATORS = ("$eq", "$ne", "$in", "$nin", "$exists", *RANGES)


class InvalidFilter(SimsearchError):
    status_code = 422
    code = "invalid_filter"


@dataclass(frozen=True)
class Condition:
    path: str
    op: str  # one of OPERATORS
    value: Any  # a Scalar; a tuple of them for $in / $nin; a bool for $exists
    wanted: frozenset = frozenset()  # $eq $ne $in $nin: the typed values, built once per filter


@dataclass(frozen=True)
class Group:
    op: str  # "$and" | "$or"
    children: tuple[Filter, ...]


Filter = Condition | Group


def typed(value: Any) -> tuple[str, Any]:
    """A value as compared: bools apart from numbers, 1 and 1.0 alike. Never raises: an integer
    beyond float range (metadata may hold one) compares as an infinity."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, float):
        return ("n", value)
    if isinstance(value, int):
        try:
            return ("n", float(value))
        except OverflowError:
            return ("n", math.inf if value > 0 else -math.inf)
    return ("s", value)


def parse(raw: Any, where: str = "filter") -> Filter:
    """A validated filter, or InvalidFilter naming the field (as `filter.year.$gte`)."""
    budget = [MAX_NODES]
    return _parse(raw, where, 1, budget)


def _fail(where: str, detail: str) -> InvalidFilter:
    return InvalidFilter(f"{where}: {detail}")


def _spend(budget: list[int], where: str) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise _fail(where, f"a filter holds at most {MAX_NODES} conditions")


def _parse(raw: Any, where: str, depth: int, budget: list[int]) -> Filter:
    if depth > MAX_DEPTH:
        raise _fail(where, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(raw, dict) or not raw:
        raise _fail(where, "expected a non-empty JSON object of conditions")
    parts: list[Filter] = []
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _fail(at, "expected a non-empty list of filters")
            children = tuple(_parse(v, f"{at}[{n}]", depth + 1, budget) for n, v in enumerate(value))
            parts.append(Group(key, children))
        elif key.startswith("$"):
            raise _fail(at, "unknown operator here (top level takes field names, $and and $or)")
        else:
            parts.extend(_field(key, value, at, budget))
    return parts[0] if len(parts) == 1 else Group("$and", tuple(parts))


def _field(path: str, value: Any, where: str, budget: list[int]) -> list[Condition]:
    if len(path) > MAX_PATH or not all(path.split(".")):
        raise _fail(where, f"a field is a dotted path of non-empty names, at most {MAX_PATH} characters")
    if not (isinstance(value, dict) and value and all(isinstance(k, str) and k.startswith("$") for k in value)):
        _spend(budget, where)
        scalar = _scalar(value, where)
        return [Condition(path, "$eq", scalar, frozenset([typed(scalar)]))]
    out = []
    for op, operand in value.items():
        at = f"{where}.{op}"
        _spend(budget, at)
        if op not in OPERATORS:
            raise _fail(at, f"unknown operator (use {', '.join(OPERATORS)})")
        if op in ("$in", "$nin"):
            if not isinstance(operand, list) or not operand:
                raise _fail(at, "expected a non-empty list of values")
            if len(operand) > MAX_IN:
                raise _fail(at, f"at most {MAX_IN} values")
            values = tuple(_scalar(v, f"{at}[{n}]") for n, v in enumerate(operand))
            out.append(Condition(path, op, values, frozenset(typed(v) for v in values)))
        elif op == "$exists":
            if not isinstance(operand, bool):
                raise _fail(at, "expected true or false")
            out.append(Condition(path, op, operand))
        elif op in RANGES:
            if isinstance(operand, bool) or not isinstance(operand, int | float | str):
                raise _fail(at, "expected a number or a string")
            out.append(Condition(path, op, _scalar(operand, at)))
        else:
            scalar = _scalar(operand, at)
            out.append(Condition(path, op, scalar, frozenset([typed(scalar)])))
    return out


def _scalar(value: Any, where: str) -> Scalar:
    if value is None:
        raise _fail(where, 'null matches nothing; use {"$exists": false} for a missing field')
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(where, "expected a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise _fail(where, "a number out of range (integers up to 2**63)")
    if not isinstance(value, str | int | float | bool):
        raise _fail(where, "expected a string, a number or a boolean (or an operator object)")
    return value


def fields(metadata: Any, prefix: str = "") -> dict[str, list[Any]]:
    """Every dotted path of a metadata object with the values found there (lists flattened)."""
    out: dict[str, list[Any]] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            if path:
                out.setdefault(path, [])
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            out.setdefault(path, [])
            for v in value:
                walk(v, path)
        else:
            out.setdefault(path, []).append(value)

    if isinstance(metadata, dict):
        walk(metadata, prefix)
    return out


def compare(op: str, have: tuple[str, Any], bound: tuple[str, Any]) -> bool:
    if have[0] != bound[0] or have[0] == "b":
        return False
    a, b = have[1], bound[1]
    return a > b if op == "$gt" else a >= b if op == "$gte" else a < b if op == "$lt" else a <= b


def matches(node: Filter, metadata: Any) -> bool:
    """Whether one image's metadata passes the filter (the semantics the worker's columns follow)."""
    return _matches(node, fields(metadata))


def _matches(node: Filter, present: dict[str, list[Any]]) -> bool:
    if isinstance(node, Group):
        test = all if node.op == "$and" else any
        return test(_matches(c, present) for c in node.children)
    if node.path not in present:
        return node.op in ("$ne", "$nin") or (node.op == "$exists" and node.value is False)
    if node.op == "$exists":
        return node.value
    values = [typed(v) for v in present[node.path] if v is not None]
    if node.op in ("$eq", "$ne", "$in", "$nin"):
        hit = any(v in node.wanted for v in values)
        return hit if node.op in ("$eq", "$in") else not hit
    bound = typed(node.value)
    return any(compare(node.op, v, bound) for v in values)


def paths(node: Filter) -> set[str]:
    """The fields a filter reads."""
    if isinstance(node, Group):
        return set().union(*(paths(c) for c in node.children))
    return {node.path}
