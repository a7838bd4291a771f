import numpy as np
import pytest

from shared.index import VectorIndex
from shared.models.base import l2_normalise


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).normal(size=(n, dim)))


def _brute_force(ids: list[str], matrix: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    scores = matrix @ query
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def test_top_k_matches_brute_force_best_first() -> None:
    vecs = _vectors(500, 32)
    ids = [f"id{i:03d}" for i in range(500)]
    index = VectorIndex(32, capacity=8)  # forces several growths
    index.upsert(ids, vecs)
    query = _vectors(1, 32, seed=1)[0]
    hits = index.search(query, 10)
    assert [h[0] for h in hits] == _brute_force(ids, vecs, query, 10)
    sims = [h[1] for h in hits]
    assert sims == sorted(sims, reverse=True)
    assert sims[0] == pytest.approx(float(vecs[ids.index(hits[0][0])] @ query), abs=1e-6)


def test_own_vector_is_top_1_with_similarity_one() -> None:
    vecs = _vectors(50, 16)
    index = VectorIndex(16)
    index.upsert([str(i) for i in range(50)], vecs)
    image_id, sim = index.search(vecs[17], 1)[0]
    assert image_id == "17" and sim == pytest.approx(1.0, abs=1e-6)


def test_remove_keeps_rows_dense_and_consistent() -> None:
    vecs = _vectors(20, 8)
    ids = [str(i) for i in range(20)]
    index = VectorIndex(8)
    index.upsert(ids, vecs)
    assert index.remove(["3", "19", "missing", "3"]) == 2
    assert len(index) == 18 and "3" not in index and "19" not in index
    for i in ids:
        if i not in ("3", "19"):
            np.testing.assert_allclose(index.vector(i), vecs[int(i)])
    assert all(h[0] not in ("3", "19") for h in index.search(vecs[3], 18))


def test_upsert_replaces_an_existing_vector() -> None:
    vecs = _vectors(2, 4)
    index = VectorIndex(4)
    index.upsert(["a"], vecs[:1])
    index.upsert(["a"], vecs[1:])
    assert len(index) == 1
    np.testing.assert_allclose(index.vector("a"), vecs[1])


def test_min_similarity_exclude_and_small_collections() -> None:
    vecs = _vectors(5, 8)
    index = VectorIndex(8)
    assert index.search(vecs[0], 3) == []
    index.upsert(list("abcde"), vecs)
    assert next(h[0] for h in index.search(vecs[0], 10)) == "a"
    assert len(index.search(vecs[0], 10)) == 5
    assert index.search(vecs[0], 10, min_similarity=0.999) == [("a", pytest.approx(1.0, abs=1e-6))]
    assert "a" not in [h[0] for h in index.search(vecs[0], 10, exclude="a")]
    assert index.search(-vecs[0], 10, min_similarity=0.9999) == []


def test_ties_come_back_in_id_order() -> None:
    index = VectorIndex(2)
    index.upsert(["b", "c", "a"], np.array([[1, 0], [1, 0], [1, 0]], dtype=np.float32))
    assert [h[0] for h in index.search(np.array([1, 0]), 3)] == ["a", "b", "c"]


def test_l2_normalise_handles_zero_rows() -> None:
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32
