import numpy as np
import pytest

from shared import vectors
from shared.models.base import l2_normalise


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Non-negative with a few large components, like pooled ReLU features, and plain Gaussian.
    relu = np.maximum(rng.standard_normal((n, dim)), 0) ** 2
    return l2_normalise(np.concatenate([relu, rng.standard_normal((n, dim))]).astype(np.float32))


@pytest.mark.parametrize("dim", [1280, 2048])
def test_float16_keeps_cosine_parity(dim: int) -> None:
    v = _unit(500, dim)
    stored = vectors.decode_many([vectors.encode(x) for x in v], dim)
    self_cos = np.einsum("ij,ij->i", v, stored)
    assert self_cos.min() >= 0.99999, self_cos.min()
    # Similarities between different vectors move by far less than the gaps a ranking depends on.
    q = v[:50]
    drift = np.abs(q @ v.T - q @ stored.T).max()
    assert drift < 1e-4, drift
    print(f"{dim}-d: min self-cosine {self_cos.min():.7f}, max similarity drift {drift:.2e}")


def test_legacy_float32_vectors_still_read() -> None:
    v = _unit(3, 8)
    legacy = [x.astype("<f4").tobytes() for x in v]
    assert np.array_equal(vectors.decode_many(legacy, 8), v)
    mixed = vectors.decode_many([legacy[0], vectors.encode(v[1])], 8)
    assert np.allclose(mixed, v[:2], atol=1e-3)
    with pytest.raises(ValueError):
        vectors.decode(b"\x00" * 12, 8)
    assert vectors.fits(legacy[0], 8) and vectors.fits(vectors.encode(v[0]), 8) and not vectors.fits(b"xx", 8)
