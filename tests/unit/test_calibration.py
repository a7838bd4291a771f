"""The calibrated "no similar images" threshold (worker/search/calibration.py), without services."""

from __future__ import annotations

import numpy as np
import pytest

from bench.spread import synthetic
from shared.ann import AnnIndex, AnnParams
from shared.schemas import Example, SearchParams, Threshold
from worker.search.calibration import (
    MIN_IMAGES,
    PERCENTILE,
    NoMatchPolicy,
    calibrate,
    nearest_similarities,
    no_match_message,
    requested,
    sample_positions,
    stale,
)


def _ids(n: int) -> list[str]:
    return [f"{i:032x}" for i in range(n)]


def _exact(vecs: np.ndarray) -> AnnIndex:
    index = AnnIndex(vecs.shape[1])
    index.upsert(_ids(len(vecs)), vecs)
    return index


def _brute_nearest(vecs: np.ndarray) -> np.ndarray:
    scores = vecs @ vecs.T
    np.fill_diagonal(scores, -np.inf)
    return scores.max(axis=1)


def test_nearest_similarities_leave_each_image_out_in_exact_mode() -> None:
    vecs = synthetic(700, 64, seed=1)
    vecs[5] = vecs[9]  # a duplicate: its nearest other image is its twin, at 1.0, not itself
    index = _exact(vecs)
    positions = sample_positions(_ids(len(vecs)))
    assert len(positions) == 500
    got = nearest_similarities(index, positions)
    np.testing.assert_allclose(got, _brute_nearest(vecs)[positions], atol=1e-5)
    assert nearest_similarities(index, np.array([5, 9])) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_nearest_similarities_span_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows past the first block are compared too, and each sample's own row is skipped there."""
    import worker.search.calibration as calibration

    monkeypatch.setattr(calibration, "BLOCK", 64)
    vecs = synthetic(300, 32, seed=2)
    positions = np.arange(300)
    np.testing.assert_allclose(nearest_similarities(_exact(vecs), positions), _brute_nearest(vecs), atol=1e-5)


def test_nearest_similarities_in_approximate_mode_match_the_exact_ones() -> None:
    vecs = synthetic(3000, 128, seed=3)
    index = AnnIndex(128, params=AnnParams(threshold=500, background=False))
    index.upsert(_ids(len(vecs)), vecs)
    assert not index.exact
    positions = sample_positions(_ids(len(vecs)), 200)
    got = nearest_similarities(index, positions)
    want = _brute_nearest(vecs)[positions]
    assert np.mean(np.abs(got - want) < 1e-4) >= 0.95  # approximate search: nearly every nearest found


def test_the_sample_is_fixed_and_bounded() -> None:
    assert list(sample_positions(_ids(5))) == [0, 1, 2, 3, 4]
    first, again = sample_positions(_ids(100_000), 500), sample_positions(_ids(100_000), 500)
    assert len(first) == 500 == len(set(first.tolist())) and np.array_equal(first, again)


def test_replicas_built_in_another_order_derive_the_same_threshold() -> None:
    """The sample is chosen by id, not by row: a replica restored from a snapshot and one built
    from a scan hold the same vectors in other orders."""
    vecs = synthetic(3000, 64, seed=8)
    ids = _ids(len(vecs))
    order = np.random.default_rng(1).permutation(len(vecs))
    one, other = AnnIndex(64), AnnIndex(64)
    one.upsert(ids, vecs)
    other.upsert([ids[i] for i in order], vecs[order])
    a, b = calibrate(one, None), calibrate(other, None)
    assert a is not None and a == b


def test_vectors_deleted_since_the_sync_are_left_out_not_counted_as_unmatched() -> None:
    """Approximate mode fetches the sampled vectors from Redis: one deleted meanwhile comes back
    NaN and has no nearest neighbour; it must not drag the percentile down to -1."""
    vecs = synthetic(3000, 128, seed=9)
    ids = _ids(len(vecs))
    source = dict(zip(ids, vecs, strict=True))

    def fetch(wanted: list[str]) -> np.ndarray:
        return np.stack([source.get(i, np.full(128, np.nan, np.float32)) for i in wanted])

    index = AnnIndex(128, fetch_vectors=fetch, params=AnnParams(threshold=500, background=False))
    index.upsert(ids, vecs)
    before = calibrate(index, None)
    for i in ids[::10]:  # 10 % deleted from Redis, the replica not yet synced
        del source[i]
    after = calibrate(index, None)
    assert before is not None and after is not None and after.source == "collection"
    assert after.sample is not None and after.sample < 500
    assert abs(after.value - before.value) < 0.05


def test_a_build_finishing_during_calibration_is_not_an_error() -> None:
    """A replica crossing ANN_THRESHOLD trains in a thread; if it finishes between the index
    saying it is exact and the matrix being read, calibration goes the approximate way."""
    vecs = synthetic(1200, 128, seed=10)
    ids = _ids(len(vecs))
    source = dict(zip(ids, vecs, strict=True))
    fetch = lambda wanted: np.stack([source[i] for i in wanted])  # noqa: E731
    index = AnnIndex(128, fetch_vectors=fetch, params=AnnParams(threshold=1000, background=True))
    index.upsert(ids, vecs)
    build = index._build
    assert build is not None and build.thread is not None
    build.thread.join()  # finished, not yet noticed: `exact` still says True
    assert index.exact
    threshold = calibrate(index, None)
    assert threshold is not None and threshold.source == "collection"


def test_calibrate_takes_the_percentile_of_the_collections_own_nearest_neighbours() -> None:
    vecs = synthetic(400, 64, seed=4)
    threshold = calibrate(_exact(vecs), floor=None)
    assert threshold is not None and threshold.source == "collection" and threshold.sample == 400
    assert threshold.value == pytest.approx(np.percentile(_brute_nearest(vecs), PERCENTILE), abs=1e-5)
    # about 1 % of the collection's own images fall below it
    assert 0.005 <= np.mean(_brute_nearest(vecs) < threshold.value) <= 0.015


def test_a_model_floor_applies_below_min_images_and_as_a_minimum() -> None:
    vecs = synthetic(MIN_IMAGES - 1, 64, seed=5)
    assert calibrate(_exact(vecs), floor=None) is None
    assert calibrate(_exact(vecs), floor=0.4) == Threshold(value=0.4, source="model")
    many = synthetic(200, 64, seed=5)
    calibrated = calibrate(_exact(many), floor=None)
    assert calibrated is not None
    high = calibrate(_exact(many), floor=calibrated.value + 0.01)
    assert high is not None and high.source == "model" and high.value == pytest.approx(calibrated.value + 0.01)


def test_stale_after_any_change_when_small_and_five_percent_when_large() -> None:
    assert not stale(10, 500, 10)
    assert stale(10, 500, 11)
    assert not stale(100, 100_000, 4_000)
    assert stale(100, 100_000, 5_100)


def test_an_explicit_min_similarity_wins_and_zero_is_off() -> None:
    assert requested(SearchParams()) is False  # the default applies
    assert requested(SearchParams(min_similarity=0.5)) == Threshold(value=0.5, source="request")
    assert requested(SearchParams(min_similarity=0)) is None
    examples = SearchParams(positive=[Example(image_id="a" * 32)])
    assert requested(examples) is None  # a combined direction is not an image: no calibrated default


def test_model_floors_hold_for_imagenet_weights_only() -> None:
    assert NoMatchPolicy(model_floors=True).floor_of("efficientnet-lite0") == 0.40
    assert NoMatchPolicy(model_floors=False).floor_of("efficientnet-lite0") is None
    assert NoMatchPolicy().floor_of("resnet50") is None  # its ImageNet weights cannot be measured here


def test_the_message_says_what_refused_the_closest() -> None:
    text = no_match_message(0.31234, Threshold(value=0.61, source="collection", sample=500))
    assert text.startswith("No similar images found (the closest had 0.312, below the threshold 0.610")
    assert "calibrated on this collection" in text
    assert no_match_message(None, None) == "No similar images found"


def test_the_percentile_is_the_deployments_or_else_the_models(monkeypatch) -> None:
    from worker.runtime import no_match_policy
    from worker.settings import WorkerSettings

    monkeypatch.delenv("NO_MATCH_PERCENTILE", raising=False)
    lite2 = no_match_policy(WorkerSettings(embedding_model="efficientnet-lite2"))
    assert lite2.enabled and lite2.model_floors and lite2.percentile == 0.5
    assert no_match_policy(WorkerSettings(embedding_model="efficientnet-lite0")).percentile == 1.0
    chosen = no_match_policy(WorkerSettings(embedding_model="efficientnet-lite2", no_match_percentile=2.0))
    assert chosen.percentile == 2.0
    random = no_match_policy(WorkerSettings(embedding_model="efficientnet-lite2", embedding_weights="random"))
    assert not random.enabled and not random.model_floors
