"""Multi-example queries: how positive and negative examples become one query vector."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import SimsearchError
from worker.search.searching import NEGATIVE_SCALE, combine


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_one_positive_is_itself_and_positives_are_a_weighted_mean():
    a, b = unit([1, 0, 0]), unit([0, 1, 0])
    assert np.allclose(combine([(a, 1.0)], []), a)
    assert np.allclose(combine([(a, 1.0), (b, 3.0)], []), unit(0.25 * a + 0.75 * b))
    # Scaling every weight changes nothing: only their ratios count.
    assert np.allclose(combine([(a, 2.0), (b, 6.0)], [(a, 5.0)]), combine([(a, 1.0), (b, 3.0)], [(a, 2.5)]))


def test_negatives_subtract_their_mean_scaled():
    p, n1, n2 = unit([1, 1, 0]), unit([0, 1, 0]), unit([0, 1, 1])
    got = combine([(p, 1.0)], [(n1, 1.0), (n2, 1.0)])
    assert np.allclose(got, unit(p - NEGATIVE_SCALE * (n1 + n2) / 2))
    # More negatives of the same kind do not outweigh the positive (means, not sums).
    many = combine([(p, 1.0)], [(n1, 1.0)] * 5)
    assert np.allclose(many, combine([(p, 1.0)], [(n1, 1.0)]))
    assert float(many @ p) > 0.5


def test_examples_that_cancel_are_an_error():
    with pytest.raises(SimsearchError) as err:
        combine([(np.zeros(3, np.float32), 1.0)], [])
    assert err.value.code == "empty_query" and err.value.status_code == 422
