"""Near-duplicate groups (worker/analysis/duplicates.py) on synthetic vectors with planted copies."""

from __future__ import annotations

import numpy as np
import pytest

from worker.analysis import duplicates
from worker.analysis.duplicates import duplicate_groups


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _collection(n: int, dim: int, planted: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = _unit(rng.standard_normal((n, dim)))
    copies = _unit(base[:planted] + 0.05 * rng.standard_normal((planted, dim)) / np.sqrt(dim) * 4)
    matrix = np.vstack([base, copies])
    ids = [f"{i:032x}" for i in range(len(matrix))]
    return ids, matrix


def _blocks(ids: list[str], matrix: np.ndarray, size: int = 500):
    for start in range(0, len(ids), size):
        yield ids[start : start + size], matrix[start : start + size]


@pytest.mark.parametrize("exact_below", [10**9, 100])  # exact block products, and the IVF-SQ8 path
def test_planted_pairs_come_back_as_groups_of_two(monkeypatch, exact_below: int) -> None:
    monkeypatch.setattr(duplicates, "EXACT_BELOW", exact_below)
    ids, matrix = _collection(3000, 64, planted=5)
    read, groups = duplicate_groups(_blocks(ids, matrix), 64, min_similarity=0.95)
    assert read == 3005
    assert len(groups) == 5
    for rep, members in groups:
        assert len(members) == 2 and members[0] == (rep, 1.0)
        pair = sorted(int(m, 16) for m, _ in members)
        assert pair[1] - pair[0] == 3000  # an original and its planted copy
        assert 0.95 <= members[1][1] < 1.0


def test_groups_are_connected_components_largest_first() -> None:
    dim = 32
    rng = np.random.default_rng(1)
    a = _unit(rng.standard_normal((1, dim)))[0]
    chain = [_unit((a + 0.02 * i * rng.standard_normal(dim))[None])[0] for i in range(4)]  # a tight cluster of 4
    b = _unit(rng.standard_normal((1, dim)))[0]
    pair = [b, _unit((b + 0.01 * rng.standard_normal(dim))[None])[0]]
    noise = _unit(rng.standard_normal((50, dim)))
    matrix = np.vstack([chain, pair, noise])
    ids = [f"{i:032x}" for i in range(len(matrix))]
    _, groups = duplicate_groups(_blocks(ids, matrix, 7), dim, min_similarity=0.9)
    assert [len(m) for _, m in groups] == [4, 2]
    assert {int(m, 16) for m, _ in groups[0][1]} == {0, 1, 2, 3}


def test_repeated_ids_from_a_scan_are_read_once() -> None:
    ids, matrix = _collection(50, 16, planted=1)
    blocks = [(ids[:30], matrix[:30]), (ids[20:], matrix[20:])]  # HSCAN may return a key twice
    read, groups = duplicate_groups(blocks, 16, 0.95)
    assert read == 51 and len(groups) == 1
