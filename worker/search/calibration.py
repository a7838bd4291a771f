"""A calibrated "no similar images" answer: when a search names no `min_similarity`, the
threshold comes from the collection itself.

The statistic is each image's similarity to its nearest other image in the collection, on a
fixed sample; the threshold is its PERCENTILE-th percentile. Read plainly: a query is answered
only if its closest match is at least as close as the closest match of 99 % of the collection's
own images. An image like the collection's finds one (the same draw, by construction); one
unlike everything in it does not. Measured through the service on the animals photos
(bench/no_match.py, docs/models.md): held-out photos keep their top match 99.3 % of the time at
2,000 images; every noise, plain colour, gradient, text and drawing image is refused; photos of an
animal the collection lacks are refused 68-96 % of the time (cats against dogs and pandas are the
hard case). Centred, z-scored, top-1-minus-mean and neighbour-ratio variants separated worse.

Below MIN_IMAGES the percentile means little; the model's shipped floor (ModelSpec, measured the
same way: the similarity noise and plain colours reach) applies instead, and always as a minimum.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from shared.ann import AnnIndex
from shared.schemas import SearchParams, Threshold

PERCENTILE = 1.0
SAMPLE = 500  # nearest-neighbour similarities per calibration: 500 searches, or one matmul
MIN_IMAGES = 20
BLOCK = 8192  # rows of the matrix per product in exact mode (bounds the temporary to 16 MB)


@dataclass(frozen=True)
class NoMatchPolicy:
    """How a worker picks the default threshold. `enabled` is off for random weights: their
    similarities mean nothing, so no threshold can be inferred from them. A model's shipped floor
    was measured on its ImageNet weights and holds for those only."""

    enabled: bool = True
    model_floors: bool = True
    percentile: float = PERCENTILE  # higher: stricter (refuses more unseen kinds, and more of the collection's)

    def floor_of(self, model: str) -> float | None:
        from shared.models.registry import MODELS

        spec = MODELS.get(model)
        return spec.no_match_floor if self.model_floors and spec is not None else None


def sample_positions(ids: list[str], size: int = SAMPLE) -> np.ndarray:
    """The rows of a fixed sample of images, chosen by a hash of their ids, not by row: replicas
    built in another order (scan, snapshot and replay) pick the same images, so every worker
    holding the same vectors derives the same threshold."""
    if len(ids) <= size:
        return np.arange(len(ids))
    keys = np.fromiter((zlib.crc32(i.encode()) for i in ids), dtype=np.int64, count=len(ids))
    return np.sort(np.lexsort((np.arange(len(ids)), keys))[:size])


def _matrix(index: AnnIndex) -> np.ndarray | None:
    """The exact index's float32 rows; None once it is approximate (a background build may finish
    between reading `exact` and asking for the matrix, which the approximate index no longer keeps)."""
    if not index.exact:
        return None
    try:
        return index.matrix
    except RuntimeError:
        return None


def nearest_similarities(index: AnnIndex, positions: np.ndarray) -> np.ndarray:
    """Each sampled row's cosine similarity to its nearest other row. Rows that cannot be judged
    (their vector deleted from Redis since the replica synced) are left out."""
    matrix = _matrix(index)
    if matrix is not None:
        sample = matrix[positions]
        best = np.full(len(positions), -np.inf, dtype=np.float32)
        for start in range(0, len(matrix), BLOCK):
            scores = sample @ matrix[start : start + BLOCK].T
            own = positions - start
            inside = np.nonzero((own >= 0) & (own < scores.shape[1]))[0]
            scores[inside, own[inside]] = -np.inf  # not its own nearest
            np.maximum(best, scores.max(axis=1), out=best)
        return best
    ids = index.ids
    vectors = index.rows(positions)
    out = []
    for row, vec in zip(positions, vectors, strict=True):
        if not np.isfinite(vec).all():
            continue  # deleted meanwhile: fetched as NaN
        hits = index.search(vec, 1, exclude=ids[row])
        if hits and np.isfinite(hits[0][1]):
            out.append(hits[0][1])
    return np.asarray(out, dtype=np.float32)


def calibrate(index: AnnIndex, floor: float | None, percentile: float = PERCENTILE) -> Threshold | None:
    """The collection's threshold (source "collection"), the model's floor below MIN_IMAGES (source
    "model"), or None when neither exists."""
    n = len(index)
    nearest = nearest_similarities(index, sample_positions(index.ids)) if n >= MIN_IMAGES else np.empty(0)
    if len(nearest) < MIN_IMAGES:
        return None if floor is None else Threshold(value=floor, source="model")
    value = float(np.percentile(nearest, percentile))
    if floor is not None and value < floor:
        return Threshold(value=floor, source="model", sample=len(nearest))
    return Threshold(value=round(value, 6), source="collection", sample=len(nearest))


def stale(calibrated_at: int, size: int, version: int) -> bool:
    """Whether a calibration made at collection version `calibrated_at` needs redoing: a small
    collection at every change (it costs little), a large one once 5 % of it has changed."""
    changes = version - calibrated_at
    return changes != 0 and (size < 1000 or changes >= 0.05 * size)


def requested(params: SearchParams) -> Threshold | bool | None:
    """The caller's own threshold: a Threshold, None for "off" (min_similarity=0), or False when
    the caller named none and the default applies. A query made of examples is a direction, not
    an image: image-to-image calibration says nothing about it, so it gets no default."""
    if params.min_similarity is not None:
        return None if params.min_similarity == 0 else Threshold(value=params.min_similarity, source="request")
    if params.positive:
        return None
    return False


def no_match_message(best: float | None, threshold: Threshold | None) -> str:
    """What an empty answer says: which threshold refused what, and where that threshold came from."""
    message = "No similar images found"
    if best is None or threshold is None:
        return message
    origin = {
        "request": "the min_similarity asked for",
        "collection": "calibrated on this collection: 99 % of its own images have a match this close",
        "model": "the model's floor for unrelated images",
    }[threshold.source]
    return f"{message} (the closest had {best:.3f}, below the threshold {threshold.value:.3f}: {origin})"
