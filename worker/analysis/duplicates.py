"""Near-duplicate groups over a whole collection: connected components of the k-NN graph whose
edges are at least `min_similarity` (cosine), found through an index, never all pairs.

Vectors are read once, a block at a time, into a float16 scratch file (the exact source for
verifying pairs) and an IVF index of 8-bit scalar-quantised codes (1 byte per dimension: 1.3 GB
at 1 M x 1280). Every vector then asks the index for its k nearest in batches (faiss, all cores);
a candidate pair is kept only if its exact similarity reaches the threshold. Small collections
skip the index and compare exactly, block by block.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.ann import _faiss

EXACT_BELOW = 20_000  # vectors: below this, exact block products are fast enough
QUERY_BLOCK = 4096
MARGIN = 0.03  # quantised similarities may read this much low; exact verification decides


@dataclass(frozen=True)
class Group:
    representative: int  # row of the member most connected inside the group
    members: list[tuple[int, float]]  # (row, exact similarity to the representative), best first


def _components(edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    parent: dict[int, int] = {}

    def root(a: int) -> int:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for a in list(parent):
        groups.setdefault(root(a), []).append(a)
    return list(groups.values())


def _candidate_pairs(matrix: np.ndarray, min_similarity: float, k: int) -> Iterator[tuple[int, int]]:
    """(a, b) with a < b among each row's k nearest, by an index (or exactly when small)."""
    n, dim = matrix.shape
    faiss = _faiss()
    if n < EXACT_BELOW:
        index = faiss.IndexFlatIP(dim)
        floor = min_similarity - 1e-6
    else:
        nlist = int(min(max(4 * math.sqrt(n), 64), n // 39))
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        sample = matrix[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.nprobe = 8
        floor = min_similarity - MARGIN
    for start in range(0, n, QUERY_BLOCK):
        index.add(np.ascontiguousarray(matrix[start : start + QUERY_BLOCK], dtype=np.float32))
    for start in range(0, n, QUERY_BLOCK):
        block = np.ascontiguousarray(matrix[start : start + QUERY_BLOCK], dtype=np.float32)
        sims, rows = index.search(block, k + 1)
        for offset in range(len(block)):
            a = start + offset
            for sim, b in zip(sims[offset], rows[offset], strict=True):
                if b < 0 or b == a or sim < floor:
                    continue
                yield (a, int(b)) if a < b else (int(b), a)


def find_groups(matrix: np.ndarray, min_similarity: float, k: int = 10) -> list[Group]:
    """Groups of rows of unit-norm `matrix` (any array-like, e.g. a float16 memmap), largest first."""
    edges = set()
    for a, b in _candidate_pairs(matrix, min_similarity, k):
        if (a, b) not in edges and float(matrix[a].astype(np.float32) @ matrix[b].astype(np.float32)) >= min_similarity:
            edges.add((a, b))
    degree: dict[int, int] = {}
    for a, b in edges:
        degree[a] = degree.get(a, 0) + 1
        degree[b] = degree.get(b, 0) + 1
    groups = []
    for members in _components(edges):
        rep = min(members, key=lambda m: (-degree[m], m))
        vec = matrix[rep].astype(np.float32)
        sims = [(m, float(matrix[m].astype(np.float32) @ vec)) for m in members if m != rep]
        groups.append(Group(rep, [(rep, 1.0), *sorted(sims, key=lambda x: (-x[1], x[0]))]))
    return sorted(groups, key=lambda g: (-len(g.members), g.representative))


class Scratch:
    """The collection's vectors as a float16 file (rows in reading order) and their ids."""

    def __init__(self, blocks: Iterable[tuple[list[str], np.ndarray]], dim: int, folder: Path) -> None:
        self.ids: list[str] = []
        path = folder / "vectors.f16"
        seen: set[str] = set()
        with path.open("wb") as out:
            for ids, block in blocks:
                keep = [k for k, i in enumerate(ids) if i not in seen]  # HSCAN may repeat a key
                seen.update(ids[k] for k in keep)
                self.ids += [ids[k] for k in keep]
                out.write(np.ascontiguousarray(block[keep], dtype=np.float16).tobytes())
        shape = (len(self.ids), dim)
        self.matrix = np.memmap(path, dtype=np.float16, mode="r", shape=shape) if self.ids else np.zeros(shape)


def duplicate_groups(
    blocks: Iterable[tuple[list[str], np.ndarray]], dim: int, min_similarity: float, k: int = 10
) -> tuple[int, list[tuple[str, list[tuple[str, float]]]]]:
    """(vectors read, groups as (representative id, [(member id, similarity)])), largest first."""
    with tempfile.TemporaryDirectory(prefix="duplicates-") as folder:
        scratch = Scratch(blocks, dim, Path(folder))
        groups = find_groups(scratch.matrix, min_similarity, k) if len(scratch.ids) > 1 else []
        named = [(scratch.ids[g.representative], [(scratch.ids[m], round(s, 6)) for m, s in g.members]) for g in groups]
        return len(scratch.ids), named
