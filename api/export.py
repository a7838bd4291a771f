"""Streaming exports of a collection's embeddings: memory stays flat whatever the collection size.

CSV: `image_id,filename,0,...,D-1`, like the notebook's feature file; floats printed with 9
significant digits, which round-trip float32 exactly. File names are the uploader's text: one that
begins like a formula is prefixed with `'` (OWASP's CSV-injection advice), so a spreadsheet shows
it instead of evaluating it. The vector columns are numbers and stay as they are (-0.01 too).
NPY: a zip of `embeddings.npy` (float32, N x D) and `ids.csv` (row order), written as a stream.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import AsyncIterator

import numpy as np
from numpy.lib import format as npy_format

from api.store import ApiStore
from shared import vectors

CHUNK = 500
CSV_ROWS = 32
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: str) -> str:
    """A text cell a spreadsheet will not evaluate."""
    return "'" + value if value.startswith(FORMULA_START) else value


async def csv_rows(store: ApiStore, collection: str, dim: int) -> AsyncIterator[bytes]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image_id", "filename", *range(dim)])
    yield out.getvalue().encode()
    async for ids, chunk in _scan(store, collection):
        names = [text_cell(n) for n in await store.filenames(collection, ids)]
        matrix = vectors.decode_many([chunk[i.encode()] for i in ids], dim)
        # Text is ~3x the size of the floats (and StringIO holds 4 bytes a character): small pieces.
        for start in range(0, len(ids), CSV_ROWS):
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            piece = slice(start, start + CSV_ROWS)
            for image_id, name, row in zip(ids[piece], names[piece], matrix[piece], strict=True):
                writer.writerow([image_id, name, *np.char.mod("%.9g", row)])
            yield out.getvalue().encode()


async def _scan(store: ApiStore, collection: str) -> AsyncIterator[tuple[list[str], dict[bytes, bytes]]]:
    """Each shard's vectors in blocks: (new ids, the block)."""
    for shard in range(await store.shard_count(collection)):
        seen: set[str] = set()  # HSCAN may return an entry twice while Redis resizes the hash
        cursor = 0
        while True:
            cursor, chunk = await store.scan_vectors(collection, shard, cursor, CHUNK)
            ids = [k.decode() for k in chunk if k.decode() not in seen]
            seen.update(ids)
            if ids:
                yield ids, chunk
            if cursor == 0:
                break


class _Sink(io.RawIOBase):
    """A write-only stream that hands back what was written since the last drain."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


async def npy_zip(store: ApiStore, collection: str, dim: int) -> AsyncIterator[bytes]:
    # The id list fixes N for the .npy header; a vector deleted while exporting becomes a NaN row.
    ids = await store.vector_ids(collection)
    sink = _Sink()
    archive = zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED)
    missing = np.full(dim, np.nan, dtype="<f4").tobytes()
    with archive.open("embeddings.npy", "w", force_zip64=True) as member:
        header = io.BytesIO()
        npy_format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (len(ids), dim)})
        member.write(header.getvalue())
        for start in range(0, len(ids), CHUNK):
            raw = await store.vectors(collection, ids[start : start + CHUNK])
            member.write(b"".join(vectors.decode(r, dim).astype("<f4").tobytes() if r else missing for r in raw))
            yield sink.drain()
    with archive.open("ids.csv", "w", force_zip64=True) as member:
        member.write(b"row,image_id,filename\n")
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            names = [text_cell(n) for n in await store.filenames(collection, chunk)]
            writer.writerows(
                (start + i, image_id, name) for i, (image_id, name) in enumerate(zip(chunk, names, strict=True))
            )
            member.write(out.getvalue().encode())
            yield sink.drain()
    archive.close()
    yield sink.drain()
