"""Cluster a collection's vectors into categories, as the notebook did, but at scale.

K-means on L2-normalised vectors (so Euclidean distance ranks like cosine), fitted with
MiniBatchKMeans on a bounded random sample and then applied to every vector; K chosen by the best
silhouette score, computed on a bounded sample too. Cost is bounded whatever the collection size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shared.models.base import l2_normalise

FIT_SAMPLE = 20_000
SILHOUETTE_SAMPLE = 4_000
SAMPLES_PER_CLUSTER = 8
# A wide K range (2..100) fitted K by K held a worker for minutes: at most this many K values are
# tried, spread over the range, and the sweep stops at the budget with the best K so far.
MAX_CANDIDATES = 15
SWEEP_BUDGET_S = 60.0


@dataclass(frozen=True)
class Clustering:
    k: int
    silhouette: dict[int, float]
    labels: np.ndarray  # one per input row
    centroids: np.ndarray  # (k, dim), unit norm
    medoids: list[int]  # row of the vector nearest each centroid
    samples: list[list[int]]  # rows nearest each centroid, best first
    sizes: list[int]


def _fit(matrix: np.ndarray, k: int, seed: int):
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)
    sample = matrix[rng.choice(len(matrix), FIT_SAMPLE, replace=False)] if len(matrix) > FIT_SAMPLE else matrix
    model = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=2048, n_init=3, max_iter=50)
    return model.fit(sample)


def _silhouette(matrix: np.ndarray, labels: np.ndarray, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    if len(set(labels.tolist())) < 2:
        return -1.0
    size = min(len(matrix), SILHOUETTE_SAMPLE)
    return float(silhouette_score(matrix, labels, sample_size=size, random_state=seed))


def candidate_ks(k_min: int, k_max: int) -> list[int]:
    """At most MAX_CANDIDATES values of K, both ends included, spread evenly."""
    if k_max - k_min + 1 <= MAX_CANDIDATES:
        return list(range(k_min, k_max + 1))
    return sorted({round(float(x)) for x in np.linspace(k_min, k_max, MAX_CANDIDATES)})


def cluster(
    matrix: np.ndarray,
    k: int | None,
    k_min: int = 2,
    k_max: int = 10,
    seed: int = 0,
    budget_s: float = SWEEP_BUDGET_S,
) -> Clustering:
    """Cluster rows of unit-norm vectors; with k=None choose K in [k_min, k_max] by silhouette
    (the K values tried, and their scores, are in `silhouette`)."""
    n = len(matrix)
    if n < 2:
        raise ValueError("clustering needs at least 2 images")
    candidates = [k] if k is not None else candidate_ks(k_min, min(k_max, n - 1))
    if not candidates or min(candidates) < 2 or max(candidates) >= n:
        raise ValueError(f"K must be between 2 and {n - 1} for {n} images")
    scores: dict[int, float] = {}
    best = None
    started = time.monotonic()
    for candidate in candidates:
        if best is not None and time.monotonic() - started > budget_s:
            break
        model = _fit(matrix, candidate, seed)
        labels = model.predict(matrix)
        scores[candidate] = round(_silhouette(matrix, labels, seed), 6)
        if best is None or scores[candidate] > scores[best[0]]:
            best = (candidate, model, labels)
    chosen, model, labels = best
    centroids = l2_normalise(model.cluster_centers_)
    similarity = matrix @ centroids.T
    medoids, samples, sizes = [], [], []
    for c in range(chosen):
        rows = np.flatnonzero(labels == c)
        order = rows[np.argsort(-similarity[rows, c], kind="stable")]
        medoids.append(int(order[0]) if len(order) else -1)
        samples.append(order[:SAMPLES_PER_CLUSTER].tolist())
        sizes.append(len(rows))
    return Clustering(chosen, scores, labels.astype(np.int32), centroids, medoids, samples, sizes)
