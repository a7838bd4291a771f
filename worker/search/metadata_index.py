"""A replica's metadata, column by column, for filtered search (the language: shared/filters.py).

Only fields some filter has used are held: a field's column is loaded from the image records in
Redis the first time a filter names it (one pass over the replica's ids), and the replica's
catch-up keeps every loaded column current (`apply`), so a search that follows an index job sees
its images' metadata as it sees their vectors. A column is an inverted index (value -> slots) for
equality and `$in`, the numeric values with their slots as arrays for ranges, and the slots where
the field is present. Evaluating a filter gives a boolean per slot; `mask` turns it into the
boolean per index row that `AnnIndex.search` takes (pre-filtering: the index then searches only
the images that pass, exactly when they are few, so a selective filter still finds k).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from shared.filters import RANGES, Condition, Filter, compare, fields, paths, typed

# ids -> each one's metadata (None: no record or no metadata)
ReadMetadata = Callable[[list[str]], list[Any]]


class Rows(Protocol):
    """What `mask` needs of an index (shared.ann.AnnIndex has it)."""

    @property
    def ids(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def rows_of(self, ids: Sequence[str]) -> np.ndarray: ...


LOAD_BATCH = 5000
MAX_COLUMNS = 64  # fields held at once; the least recently filtered on is dropped beyond that
MAX_SEEN = 10_000  # distinct fields remembered (so a field no image has costs no scan); beyond: scan


@dataclass
class _Column:
    present: array = field(default_factory=lambda: array("q"))
    values: dict[tuple[str, Any], array] = field(default_factory=dict)
    num_slots: array = field(default_factory=lambda: array("q"))
    num_values: array = field(default_factory=lambda: array("d"))

    def add(self, slot: int, found: list[Any]) -> None:
        self.present.append(slot)
        for value in found:
            if value is None:
                continue
            key = typed(value)
            self.values.setdefault(key, array("q")).append(slot)
            if key[0] == "n":
                self.num_slots.append(slot)
                self.num_values.append(key[1])


class MetadataIndex:
    def __init__(self, ids: Iterable[str]) -> None:
        self._ids: list[str] = []
        self._slot: dict[str, int] = {}
        self._alive = bytearray()
        self._columns: dict[str, _Column] = {}  # least recently used first
        self._rows: tuple[Any, np.ndarray] | None = None  # (cache key, slot of each index row)
        self._stale: tuple[Any, int] = (None, 0)  # (key, images mapped one by one at that key)
        # Every field some image has, learnt by the first load (None: not yet, or too many to
        # track): a filter on a field no image has then gets an empty column without a scan.
        self._seen: set[str] | None = None
        for image_id in ids:
            self._new_slot(image_id)

    def __len__(self) -> int:
        return len(self._slot)

    @property
    def wasteful(self) -> bool:
        """Deleted images' slots outnumber live ones: rebuilding beats carrying them."""
        dead = len(self._ids) - len(self._slot)
        return dead > 10_000 and dead > len(self._slot)

    def ensure(self, node: Filter, read: ReadMetadata) -> None:
        """Load the columns the filter reads that are not held yet."""
        used = paths(node)
        for path in used & set(self._columns):  # most recently used last
            self._columns[path] = self._columns.pop(path)
        wanted = sorted(used - set(self._columns))
        if wanted:
            self._columns.update(self._load(wanted, read))
        # Drop the least recently used beyond the cap, never one this filter reads.
        for path in [p for p in self._columns if p not in used][: max(0, len(self._columns) - MAX_COLUMNS)]:
            del self._columns[path]

    def _load(self, wanted: list[str], read: ReadMetadata) -> dict[str, _Column]:
        columns = {p: _Column() for p in wanted}
        if self._seen is not None and not any(p in self._seen for p in wanted):
            return columns  # no image has any of them: empty, without a scan
        seen: set[str] | None = set()
        live = list(self._slot.items())
        for start in range(0, len(live), LOAD_BATCH):
            batch = live[start : start + LOAD_BATCH]
            for (_, slot), metadata in zip(batch, read([i for i, _ in batch]), strict=True):
                seen = self._index(slot, metadata, columns, seen)
        self._seen = seen
        return columns

    def apply(self, added: Sequence[str], removed: Iterable[str], read: ReadMetadata) -> None:
        """The replica applied these log entries: follow them (an add replaces an id's metadata)."""
        for image_id in [*removed, *added]:
            slot = self._slot.pop(image_id, None)
            if slot is not None:
                self._alive[slot] = 0
        self._rows = None
        slots = [self._new_slot(i) for i in added]
        if (self._columns or self._seen is not None) and added:
            for slot, metadata in zip(slots, read(list(added)), strict=True):
                self._seen = self._index(slot, metadata, self._columns, self._seen)

    def evaluate(self, node: Filter) -> np.ndarray:
        """A boolean per slot: the live images that pass the filter (columns must be ensured)."""
        out = self._evaluate(node)
        out &= self._alive_mask()  # negations also hold for deleted images' slots
        return out

    def _evaluate(self, node: Filter) -> np.ndarray:
        if isinstance(node, Condition):
            return self._condition(node)
        # One child's array at a time: a 256-condition filter must not hold 256 of them.
        out = self._evaluate(node.children[0])
        for child in node.children[1:]:
            (np.logical_and if node.op == "$and" else np.logical_or)(out, self._evaluate(child), out=out)
        return out

    def mask(self, node: Filter, index: Rows, key: Any) -> np.ndarray:
        """A boolean per index row (in `index.ids` order): the rows that pass the filter. `key`
        names the index's state (the replica's version): the row -> slot map is kept until it
        changes. While it is stale, filters map only their passing images (`rows_of`: 4 ms for a
        1 % filter at a million) rather than every row (0.3 s), until the images so mapped since
        the change add up to the index's size; then the map is rebuilt (ski rental: never more
        than twice the cheaper choice made in hindsight)."""
        passed = self.evaluate(node)
        if self._rows is None or self._rows[0] != key:
            count = int(passed.sum())
            spent = count + (self._stale[1] if self._stale[0] == key else 0)
            if spent <= len(index):
                self._stale = (key, spent)
                rows = index.rows_of([self._ids[s] for s in np.flatnonzero(passed)])
                out = np.zeros(len(index), dtype=bool)
                out[rows[rows >= 0]] = True
                return out
            ids = index.ids
            self._rows = (key, np.fromiter((self._slot.get(i, -1) for i in ids), np.int64, len(ids)))
        return np.append(passed, False)[self._rows[1]]  # slot -1: not known here, never passes

    # -- internals --------------------------------------------------------------------------------
    def _new_slot(self, image_id: str) -> int:
        slot = len(self._ids)
        self._ids.append(image_id)
        self._slot[image_id] = slot
        self._alive.append(1)
        return slot

    def _index(self, slot: int, metadata: Any, columns: dict[str, _Column], seen: set[str] | None) -> set[str] | None:
        """Index one image's metadata into `columns`; returns `seen` with its fields added (None
        once there are too many fields to remember)."""
        if not metadata:
            return seen
        found_fields = fields(metadata)
        for path, found in found_fields.items():
            column = columns.get(path)
            if column is not None:
                column.add(slot, found)
        if seen is not None:
            seen.update(found_fields)
            if len(seen) > MAX_SEEN:
                return None
        return seen

    def _alive_mask(self) -> np.ndarray:
        return np.frombuffer(bytes(self._alive), dtype=np.uint8).astype(bool)

    def _slots(self, slots: Iterable[array]) -> np.ndarray:
        out = np.zeros(len(self._ids), dtype=bool)
        for s in slots:
            if len(s):
                out[np.frombuffer(s, dtype=np.int64)] = True
        return out

    def _condition(self, c: Condition) -> np.ndarray:
        column = self._columns[c.path]
        if c.op == "$exists":
            present = self._slots([column.present])
            return present if c.value else ~present
        if c.op in ("$eq", "$ne", "$in", "$nin"):
            hit = self._slots(column.values.get(v, array("q")) for v in c.wanted)
            return hit if c.op in ("$eq", "$in") else ~hit
        assert c.op in RANGES
        bound = typed(c.value)
        if bound[0] == "n":
            values = np.frombuffer(column.num_values, dtype=np.float64)
            slots = np.frombuffer(column.num_slots, dtype=np.int64)
            keep = _RANGE_OPS[c.op](values, bound[1]) if len(values) else np.zeros(0, bool)
            out = np.zeros(len(self._ids), dtype=bool)
            out[slots[keep]] = True
            return out
        # Strings: test each distinct value once (dates as ISO text sort right).
        return self._slots(s for key, s in column.values.items() if compare(c.op, key, bound))


_RANGE_OPS = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
