"""Cluster a collection's vectors into categories, as the notebook did, but at scale.

K-means on L2-normalised vectors (so Euclidean distance ranks like cosine), fitted on a bounded
random sample and then applied to every vector; K chosen by the best silhouette score, computed
on one bounded sample for every K. Cost is bounded whatever the collection size.

Every K gets several complete k-means runs from different starts, and keeps the one of lowest
inertia, as scikit-learn's KMeans does with n_init: one unlucky start scored the true K far below
its neighbours (150 animal photos: K=3 0.064 beside K=2 0.130 and K=4 0.133, so K=4 was chosen).
MiniBatchKMeans' own n_init only compares initialisations and then runs once, which is why the
restarts here are whole runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shared.models.base import l2_normalise

FIT_SAMPLE = 20_000
SILHOUETTE_SAMPLE = 4_000
SAMPLES_PER_CLUSTER = 8
# Up to this many sampled vectors, full-batch KMeans with KMEANS_RESTARTS starts (cheap: 5,000 x
# 1280 x 10 starts is about a second per K); above, MiniBatchKMeans, MINIBATCH_RESTARTS whole runs.
FULL_KMEANS_MAX = 5_000
KMEANS_RESTARTS = 10
MINIBATCH_RESTARTS = 3
# A wide K range (2..100) fitted K by K held a worker for minutes: at most this many K values are
# tried, spread over the range, and the sweep stops at the budget with the best K so far.
MAX_CANDIDATES = 15
SWEEP_BUDGET_S = 60.0


# rows(positions) -> float32 (len(positions), dim): the vectors at those positions, unit norm
Rows = Callable[[np.ndarray], np.ndarray]
LABEL_CHUNK = 50_000  # vectors read at a time to label them all


@dataclass(frozen=True)
class Clustering:
    k: int
    silhouette: dict[int, float]
    labels: np.ndarray  # one per input row
    centroids: np.ndarray  # (k, dim), unit norm
    medoids: list[int]  # row of the vector nearest each centroid
    samples: list[list[int]]  # rows nearest each centroid, best first
    sizes: list[int]
    similarity: np.ndarray  # per row, cosine similarity to its own centroid


def _fit(sample: np.ndarray, k: int, seed: int):
    """The best of several complete k-means runs (lowest inertia)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(sample) <= FULL_KMEANS_MAX:
        return KMeans(n_clusters=k, n_init=KMEANS_RESTARTS, random_state=seed).fit(sample)
    runs = [
        MiniBatchKMeans(n_clusters=k, random_state=seed + run, batch_size=2048, n_init=1, max_iter=50).fit(sample)
        for run in range(MINIBATCH_RESTARTS)
    ]
    return min(runs, key=lambda model: model.inertia_)


def _silhouette(matrix: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    if len(set(labels.tolist())) < 2:
        return -1.0
    return float(silhouette_score(matrix, labels))


def candidate_ks(k_min: int, k_max: int) -> list[int]:
    """At most MAX_CANDIDATES values of K, both ends included, spread evenly."""
    if k_max - k_min + 1 <= MAX_CANDIDATES:
        return list(range(k_min, k_max + 1))
    return sorted({round(float(x)) for x in np.linspace(k_min, k_max, MAX_CANDIDATES)})


def cluster(
    vectors: np.ndarray | Rows,
    k: int | None,
    k_min: int = 2,
    k_max: int = 10,
    seed: int = 0,
    budget_s: float = SWEEP_BUDGET_S,
    n: int | None = None,
) -> Clustering:
    """Cluster unit-norm vectors -- a matrix, or `n` rows read by position through a callable (a
    large approximate replica keeps no matrix) -- with k=None choosing K in [k_min, k_max] by
    silhouette (the K values tried, and their scores, are in `silhouette`). K is chosen on a
    random sample; only the final labelling reads every vector, a chunk at a time."""
    rows: Rows = (lambda positions: vectors[positions]) if isinstance(vectors, np.ndarray) else vectors
    n = len(vectors) if isinstance(vectors, np.ndarray) else n
    if n is None or n < 2:
        raise ValueError("clustering needs at least 2 images")
    candidates = [k] if k is not None else candidate_ks(k_min, min(k_max, n - 1))
    if not candidates or min(candidates) < 2 or max(candidates) >= n:
        raise ValueError(f"K must be between 2 and {n - 1} for {n} images")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n, FIT_SAMPLE, replace=False)) if n > FIT_SAMPLE else np.arange(n)
    sample = np.asarray(rows(picked), dtype=np.float32)
    # Rows read from Redis come back NaN when the image was deleted since the replica synced.
    sample = sample[np.isfinite(sample).all(axis=1)]
    if len(sample) <= max(candidates):
        raise ValueError(f"K must be below the {len(sample)} images still in the collection")
    # One silhouette sample for every K: scores of different K compare the same points.
    scored = (
        np.sort(rng.choice(len(sample), SILHOUETTE_SAMPLE, replace=False)) if len(sample) > SILHOUETTE_SAMPLE else None
    )
    scores: dict[int, float] = {}
    best = None
    started = time.monotonic()
    for candidate in candidates:
        if best is not None and time.monotonic() - started > budget_s:
            break
        model = _fit(sample, candidate, seed)
        points = sample if scored is None else sample[scored]
        scores[candidate] = round(_silhouette(points, model.predict(points)), 6)
        if best is None or scores[candidate] > scores[best[0]]:
            best = (candidate, model)
    chosen, model = best
    centers = model.cluster_centers_.astype(np.float32)
    centroids = l2_normalise(centers).astype(np.float32)
    half_norms = 0.5 * (centers * centers).sum(axis=1)
    labels = np.full(n, -1, dtype=np.int32)  # -1: deleted meanwhile (its row read back NaN)
    similarity = np.full(n, -np.inf, dtype=np.float32)
    for start in range(0, n, LABEL_CHUNK):
        positions = np.arange(start, min(n, start + LABEL_CHUNK))
        x = np.asarray(rows(positions), dtype=np.float32)
        live = np.isfinite(x).all(axis=1)
        x, positions = x[live], positions[live]
        # k-means' own assignment (nearest centre, as `predict`): argmax of x.c - |c|^2 / 2.
        labels[positions] = np.argmax(x @ centers.T - half_norms, axis=1)
        similarity[positions] = np.einsum("ij,ij->i", x, centroids[labels[positions]])
    medoids, samples, sizes = [], [], []
    for c in range(chosen):
        members = np.flatnonzero(labels == c)
        order = members[np.argsort(-similarity[members], kind="stable")]
        medoids.append(int(order[0]) if len(order) else -1)
        samples.append(order[:SAMPLES_PER_CLUSTER].tolist())
        sizes.append(len(members))
    return Clustering(chosen, scores, labels, centroids, medoids, samples, sizes, similarity)
