import numpy as np
import pytest

from shared.index import VectorIndex
from shared.models.base import l2_normalise
from worker.analysis.clustering import cluster


def _blobs(k: int, per: int, dim: int, seed: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    truth = np.repeat(np.arange(k), per)
    return l2_normalise(centers[truth] + rng.normal(scale=spread, size=(k * per, dim))), truth


@pytest.mark.parametrize(("true_k", "seed"), [(2, 0), (3, 1), (4, 2), (6, 3)])
def test_auto_k_finds_clearly_separated_clusters(true_k: int, seed: int) -> None:
    x, truth = _blobs(true_k, 60, 64, seed)
    result = cluster(x, None, k_min=2, k_max=10)
    assert result.k == true_k
    assert sorted(result.silhouette) == list(range(2, 11))
    assert max(result.silhouette, key=result.silhouette.get) == true_k
    # Every found cluster is exactly one true cluster.
    for c in range(result.k):
        assert len(set(truth[result.labels == c].tolist())) == 1
    assert sum(result.sizes) == len(x)
    for c, medoid in enumerate(result.medoids):
        assert result.labels[medoid] == c and result.samples[c][0] == medoid
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-5)


def test_fixed_k_and_bad_k() -> None:
    x, _ = _blobs(3, 20, 16, 4)
    assert cluster(x, 5).k == 5 and list(cluster(x, 5).silhouette) == [5]
    with pytest.raises(ValueError, match="between 2"):
        cluster(x, 60)
    with pytest.raises(ValueError, match="at least 2"):
        cluster(x[:1], None)


def test_search_mask_restricts_matches() -> None:
    x, truth = _blobs(2, 10, 8, 5)
    index = VectorIndex(8)
    index.upsert([str(i) for i in range(20)], x)
    mask = np.array([truth[int(i)] == 1 for i in index.ids])
    hits = index.search(x[0], 20, mask=mask)  # query from cluster 0, only cluster 1 allowed
    assert len(hits) == 10 and all(truth[int(i)] == 1 for i, _ in hits)


def test_the_k_sweep_is_bounded() -> None:
    from worker.analysis.clustering import MAX_CANDIDATES, candidate_ks

    ks = candidate_ks(2, 100)
    assert len(ks) <= MAX_CANDIDATES and ks[0] == 2 and ks[-1] == 100
    assert candidate_ks(2, 10) == list(range(2, 11))
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((300, 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    result = cluster(matrix, None, 2, 100, budget_s=0.0)  # the budget stops the sweep after one K
    assert list(result.silhouette) == [2]


def test_rows_deleted_meanwhile_are_left_out_not_fatal() -> None:
    # An approximate replica reads rows from Redis: a vector deleted since the sync comes back NaN.
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((3, 32))
    x = np.concatenate([c + 0.05 * rng.standard_normal((60, 32)) for c in centres]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    gone = np.zeros(len(x), dtype=bool)
    gone[::17] = True
    source = np.where(gone[:, None], np.nan, x).astype(np.float32)
    result = cluster(lambda positions: source[positions], 3, n=len(x))
    assert (result.labels[gone] == -1).all() and (result.labels[~gone] >= 0).all()
    assert sum(result.sizes) == int((~gone).sum())
    assert all(not gone[m] for m in result.medoids)


def test_auto_k_finds_the_three_animals_whatever_the_row_order(tmp_path) -> None:
    """The 48 shipped photos (16 cats, 16 dogs, 16 pandas) with the real Lite0 weights. A single
    k-means run per K chose K=4 for some orders of the same rows (a collection's rows come in
    hash order); several whole runs per K find 3 for every order."""
    from pathlib import Path

    from shared.imaging import decode_image, to_model_input
    from shared.models.registry import get_model_spec
    from worker.model.inference import build_embedder

    photos = sorted((Path(__file__).parents[2] / "shared" / "models" / "calibration").glob("*.jpg"))
    network = get_model_spec("efficientnet-lite0").build("imagenet", 256, tmp_path)
    embedder = build_embedder(network, "tensorflow", "auto", tmp_path, 2)
    vectors = embedder.embed(np.stack([to_model_input(decode_image(p.read_bytes()).image, 256) for p in photos]))
    truth = np.array([p.name.split("_")[0] for p in photos])
    for order in range(20):
        perm = np.random.default_rng(100 + order).permutation(len(vectors))
        result = cluster(vectors[perm], None, 2, 10)
        assert result.k == 3, (order, result.silhouette)
        for c in range(3):  # each cluster is one animal
            assert len(set(truth[perm][result.labels == c])) == 1, (order, c)
