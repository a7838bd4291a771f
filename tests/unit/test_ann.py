import io
import random

import numpy as np
import pytest

from bench.spread import synthetic
from shared.ann import AnnIndex, AnnParams, fetcher, nlist_for
from shared.index import VectorIndex

DIM = 256  # at 128-d a 4-bit PQ code is too coarse for C = 100; real vectors have 1280 or 2048
N = 30_000


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"{i:032x}" for i in range(start, start + n)]


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray]:
    # Clustered like real embeddings (bench/spread.py), which is what the recall targets are about.
    return _ids(N), synthetic(N, DIM, seed=3)


def _fetcher(ids: list[str], vecs: np.ndarray, dtype: type = np.float32):
    source = {i: v.astype(dtype).astype(np.float32) for i, v in zip(ids, vecs, strict=True)}
    calls = {"vectors": 0}

    def fetch(wanted: list[str]) -> np.ndarray:
        calls["vectors"] += len(wanted)
        return np.stack([source.get(i, np.full(vecs.shape[1], np.nan, np.float32)) for i in wanted])

    fetch.source = source  # type: ignore[attr-defined]
    fetch.calls = calls  # type: ignore[attr-defined]
    return fetch


def _approximate(ids: list[str], vecs: np.ndarray, **kw) -> AnnIndex:
    fetch = kw.pop("fetch", None)
    hold = kw.pop("hold", None)
    params = AnnParams(threshold=1_000, background=False, **kw)
    index = AnnIndex(DIM, fetch_vectors=fetch if fetch is not None else _fetcher(ids, vecs), params=params, hold=hold)
    for start in range(0, len(ids), 5_000):
        index.upsert(ids[start : start + 5_000], vecs[start : start + 5_000])
    assert not index.exact
    return index


def _truth(ids: list[str], vecs: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[str]:
    scores = vecs @ q
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    order = np.lexsort((np.array(ids), -scores))
    return [ids[r] for r in order[:k] if np.isfinite(scores[r])]


def _recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]))


# -- exact below the threshold ---------------------------------------------------------------------
def test_below_threshold_results_are_vector_index_results() -> None:
    rng = random.Random(0)
    vecs = synthetic(3_000, DIM, seed=1)
    ids = _ids(3_000)
    reference, index = VectorIndex(DIM, capacity=8), AnnIndex(DIM, params=AnnParams(threshold=10**9), capacity=8)
    live: list[str] = []
    for step in range(30):  # interleaved adds, re-adds with new vectors, removes (incl. unknown ids)
        batch = rng.sample(range(3_000), 150)
        chosen = [ids[b] for b in batch]
        for target in (reference, index):
            target.upsert(chosen, vecs[[(b * 7 + step) % 3_000 for b in batch]])
        live = reference.ids
        gone = [*rng.sample(live, 40), "missing"]
        assert reference.remove(gone) == index.remove(gone)
    assert index.ids == reference.ids and len(index) == len(reference) and index.exact
    np.testing.assert_array_equal(index.matrix, reference.matrix)
    mask = np.array([int(i, 16) % 3 == 0 for i in reference.ids])
    for q in vecs[:20]:
        for kwargs in ({}, {"min_similarity": 0.7}, {"exclude": reference.ids[5]}, {"mask": mask}):
            for k in (1, 10, 5_000):
                assert index.search(q, k, **kwargs) == reference.search(q, k, **kwargs)
    predicate = lambda i: int(i, 16) % 3 == 0  # noqa: E731
    assert index.search(vecs[0], 10, mask=predicate) == reference.search(vecs[0], 10, mask=mask)


def test_empty_and_tiny_collections() -> None:
    index = AnnIndex(4)
    assert index.search(np.ones(4), 3) == [] and len(index) == 0
    index.upsert(["a"], np.array([[1.0, 0, 0, 0]]))
    assert index.search(np.array([1.0, 0, 0, 0]), 3) == [("a", pytest.approx(1.0))]
    assert index.search(np.array([1.0, 0, 0, 0]), 0) == []


def test_fetcher_turns_missing_vectors_into_nan() -> None:
    store = {"a": np.array([0.6, 0.8], dtype="<f2").tobytes()}
    decode = lambda raw, dim: np.stack([np.frombuffer(r, dtype="<f2").astype(np.float32) for r in raw])  # noqa: E731
    got = fetcher(lambda ids: [store.get(i) for i in ids], decode, 2)(["a", "gone"])
    np.testing.assert_allclose(got[0], [0.6, 0.8], atol=1e-3)
    assert np.isnan(got[1]).all()


def test_nlist_grows_with_the_collection() -> None:
    assert nlist_for(20_000) == 256 and nlist_for(1_000_000) == 2048 and nlist_for(10) == 64


# -- approximate above it --------------------------------------------------------------------------
def test_recall_and_similarities_are_exact_float32(data) -> None:
    pytest.importorskip("faiss")
    ids, vecs = data
    fetch = _fetcher(ids, vecs)
    index = _approximate(ids, vecs, fetch=fetch)
    fetch.calls["vectors"] = 0  # (the second training read the vectors through it)
    queries = range(0, N, N // 100)
    found, truth = [], []
    for r in queries:
        hits = index.search(vecs[r], 10, exclude=ids[r])
        found.append([i for i, _ in hits])
        truth.append([i for i in _truth(ids, vecs, vecs[r], 11) if i != ids[r]][:10])
        for image_id, sim in hits:  # the similarity is the float32 cosine of what is returned
            assert sim == pytest.approx(float(fetch.source[image_id] @ vecs[r]), abs=1e-6)
        sims = [s for _, s in hits]
        assert sims == sorted(sims, reverse=True) and ids[r] not in found[-1]
    assert _recall(found, truth) >= 0.97
    # re-ranking fetched only the candidates (C = 100 by default), not the collection
    assert fetch.calls["vectors"] <= 101 * len(found)


def test_held_float16_similarities_within_1e3(data) -> None:
    pytest.importorskip("faiss")
    ids, vecs = data
    index = AnnIndex(DIM, params=AnnParams(threshold=1_000, background=False))  # nothing to fetch: holds f16
    index.upsert(ids, vecs)
    assert not index.exact and index.hold
    found, truth = [], []
    for r in range(7, N, N // 60):
        hits = index.search(vecs[r], 10)
        found.append([i for i, _ in hits])
        truth.append(_truth(ids, vecs, vecs[r], 10))
        for image_id, sim in hits:
            assert abs(sim - float(vecs[int(image_id, 16)] @ vecs[r])) <= 1e-3
    assert _recall(found, truth) >= 0.97


def test_removed_ids_never_come_back_and_can_be_re_added(data) -> None:
    pytest.importorskip("faiss")
    ids, vecs = data
    fetch = _fetcher(ids, vecs)
    index = _approximate(ids, vecs, fetch=fetch)
    q = vecs[123]
    neighbours = [i for i, _ in index.search(q, 50)]
    gone = set(neighbours[::2]) | set(random.Random(1).sample(ids, 3_000))
    assert index.remove(gone) == len(gone)
    assert len(index) == N - len(gone) and all(i not in index for i in gone)
    for r in range(0, N, 300):
        assert not {i for i, _ in index.search(vecs[r], 20)} & gone
    for i, _ in index.search(q, len(index)):  # even asking for everything
        assert i not in gone
    back = ids[123]
    assert back in gone
    index.upsert([back], vecs[123:124])
    assert index.search(q, 1)[0] == (back, pytest.approx(1.0, abs=1e-6))
    # an updated vector replaces the old one (the old label is gone from the IVF lists)
    fetch.source[back] = vecs[124]  # as the worker would find it in Redis
    index.upsert([back], vecs[124:125])
    hits = dict(index.search(vecs[124], 5))
    assert hits[back] == pytest.approx(float(vecs[124] @ vecs[124]), abs=1e-6)
    assert index.search(q, 1)[0][0] != back or index.search(q, 1)[0][1] < 0.9999


def test_masked_search_selective_and_not(data) -> None:
    pytest.importorskip("faiss")
    ids, vecs = data
    index = _approximate(ids, vecs)
    ordered = index.ids  # masks are aligned to `ids`
    rows = np.array([int(i, 16) for i in ordered])
    for allowed_share, exact_expected in ((0.003, True), (0.1, False), (0.6, False)):
        allowed = np.random.default_rng(int(allowed_share * 1000)).random(N) < allowed_share
        mask = allowed[rows]
        found, truth = [], []
        for r in range(11, N, N // 40):
            hits = index.search(vecs[r], 10, mask=mask)
            assert all(allowed[int(i, 16)] for i, _ in hits)
            found.append([i for i, _ in hits])
            truth.append(_truth(ids, vecs, vecs[r], 10, allowed))
            if exact_expected:  # few enough to search them all exactly
                assert found[-1] == truth[-1]
        assert _recall(found, truth) >= 0.97, allowed_share
    # a cluster filter: only one cluster's vectors, queried from other clusters (allowed lists far away)
    _, clusters = synthetic(N, DIM, seed=3, return_labels=True)
    found, truth = [], []
    for r in range(13, N, N // 40):
        target = (clusters[r] + 1) % clusters.max()
        allowed = clusters == target
        hits = index.search(vecs[r], 10, mask=allowed[rows])
        assert all(allowed[int(i, 16)] for i, _ in hits)
        found.append([i for i, _ in hits])
        truth.append(_truth(ids, vecs, vecs[r], 10, allowed))
    assert _recall(found, truth) >= 0.97
    # a predicate on ids, selective enough that the oversampled candidates cannot satisfy it
    chosen = set(random.Random(2).sample(ids, 40))
    hits = index.search(vecs[5], 10, mask=lambda i: i in chosen)
    assert [i for i, _ in hits] == _truth(ids, vecs, vecs[5], 10, np.array([i in chosen for i in ids]))
    # and a permissive one, answered from the oversampled candidates
    hits = index.search(vecs[5], 10, mask=lambda i: int(i, 16) % 2 == 0, min_similarity=0.5)
    assert hits and all(int(i, 16) % 2 == 0 and s >= 0.5 for i, s in hits)


def test_snapshot_round_trip_gives_identical_results(data, tmp_path) -> None:
    pytest.importorskip("faiss")
    ids, vecs = data
    fetch = _fetcher(ids, vecs)
    index = _approximate(ids, vecs, fetch=fetch)
    index.remove(ids[:100])
    buffer = io.BytesIO()
    index.save(buffer)
    copy = AnnIndex.load(buffer.getvalue(), fetch_vectors=fetch)
    index.save(tmp_path / "snap.npz")
    from_file = AnnIndex.load(tmp_path / "snap.npz", fetch_vectors=fetch)
    assert copy.ids == index.ids and not copy.exact and from_file.ids == index.ids
    for r in range(0, N, 1_000):
        expected = index.search(vecs[r], 10)
        assert copy.search(vecs[r], 10) == expected == from_file.search(vecs[r], 10)
    # changes after loading apply to the copy as to the original (the log replayed after a snapshot)
    for target in (index, copy):
        target.remove(ids[100:200])
        target.upsert(ids[:10], vecs[:10])
    assert copy.search(vecs[3], 10) == index.search(vecs[3], 10)
    # an exact-mode snapshot too
    small = AnnIndex(DIM)
    small.upsert(ids[:500], vecs[:500])
    buffer = io.BytesIO()
    small.save(buffer)
    buffer.seek(0)
    again = AnnIndex.load(buffer)
    assert again.exact and again.search(vecs[1], 10) == small.search(vecs[1], 10)


def test_ties_come_back_in_id_order(data) -> None:
    pytest.importorskip("faiss")
    ids, vecs = data
    fetch = _fetcher(ids, vecs)
    index = _approximate(ids, vecs, fetch=fetch)
    twins = ["t-c", "t-a", "t-b"]
    fetch.source.update({t: vecs[77] for t in twins})
    index.upsert(twins, np.repeat(vecs[77:78], 3, axis=0))
    hits = [i for i, _ in index.search(vecs[77], 4)]
    assert hits[:4] == sorted([*twins, ids[77]])
    exact = AnnIndex(2)
    exact.upsert(["b", "c", "a"], np.array([[1, 0], [1, 0], [1, 0]], dtype=np.float32))
    assert [h[0] for h in exact.search(np.array([1, 0]), 3)] == ["a", "b", "c"]


def test_vectors_gone_from_the_source_are_dropped(data) -> None:
    pytest.importorskip("faiss")
    ids, vecs = data
    fetch = _fetcher(ids, vecs)
    index = _approximate(ids, vecs, fetch=fetch)
    top = index.search(vecs[9], 3)[0][0]
    del fetch.source[top]  # deleted in Redis, the log entry not applied yet
    assert top not in [i for i, _ in index.search(vecs[9], 10)]


def test_background_training_journals_changes_made_meanwhile(data) -> None:
    pytest.importorskip("faiss")
    ids, vecs = data
    fetch = _fetcher(ids, vecs)
    index = AnnIndex(DIM, fetch_vectors=fetch, params=AnnParams(threshold=20_000, background=True))
    index.upsert(ids[:20_000], vecs[:20_000])  # crosses the threshold: training starts in a thread
    assert index.exact  # still answering exactly meanwhile
    index.remove(ids[:500])
    index.upsert(ids[20_000:], vecs[20_000:])
    index.upsert(ids[600:601], vecs[601:602])  # an update during the build
    fetch.source[ids[600]] = vecs[601]
    assert index.wait(120)
    assert not index.exact and len(index) == N - 500
    assert not {i for i, _ in index.search(vecs[10], 50)} & set(ids[:500])
    assert index.search(vecs[25_000], 1)[0][0] == ids[25_000]
    assert dict(index.search(vecs[601], 3))[ids[600]] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(RuntimeError):
        _ = index.matrix  # the float32 rows are gone: that is the point
    index.remove(ids[500:27_000])  # below threshold / 2: back to exact, from the source vectors
    assert index.exact and len(index) == 3_000
    assert index.search(vecs[28_000], 1)[0][0] == ids[28_000]


# -- bulk builds (a replica built from Redis) --------------------------------------------------------
def _chunks(ids: list[str], vecs: np.ndarray, size: int = 700):
    return ((ids[s : s + size], vecs[s : s + size]) for s in range(0, len(ids), size))


def test_bulk_build_below_the_threshold_is_exact(data) -> None:
    ids, vecs = data
    index = AnnIndex.bulk(DIM, 800, _chunks(ids[:800], vecs[:800]), params=AnnParams(threshold=1_000))
    assert index.exact and index.ids == ids[:800]


def test_bulk_build_is_approximate_holds_no_float32_and_finds_what_exact_finds(data) -> None:
    ids, vecs = data
    fetch = _fetcher(ids, vecs)
    index = AnnIndex.bulk(DIM, N, _chunks(ids, vecs), fetch, AnnParams(threshold=1_000))
    assert not index.exact and not index.building and index.ids == ids
    assert index._matrix is None and index._held is None  # codes only; re-ranked from the source
    assert index._ann.trained_n == N and index._ann.nlist == nlist_for(N)
    queries = list(range(0, N, 300))
    found = [[i for i, _ in index.search(vecs[q], 10, exclude=ids[q])] for q in queries]
    truth = [_truth(ids, vecs, vecs[q], 11)[1:] for q in queries]
    assert _recall(found, truth) >= 0.97
    # Bulk adds skip the per-vector list bookkeeping; a filtered search reads the lists back.
    allowed = np.zeros(N, dtype=bool)
    allowed[::7] = True
    hits = index.search(vecs[0], 10, mask=allowed)
    assert hits and all(int(i, 16) % 7 == 0 for i, _ in hits)
    assert _recall([[i for i, _ in hits]], [_truth(ids, vecs, vecs[0], 10, allowed)]) >= 0.9


def test_bulk_build_announced_large_but_small_stays_exact(data) -> None:
    ids, vecs = data
    index = AnnIndex.bulk(DIM, N, _chunks(ids[:500], vecs[:500]), params=AnnParams(threshold=1_000))
    assert index.exact and len(index) == 500  # the hash shrank between HLEN and the scan


def test_small_approximate_indexes_scan_every_list(data) -> None:
    ids, vecs = data
    small = _approximate(ids[:3_000], vecs[:3_000])
    assert small._nprobe(small._ann) == small._ann.nlist  # 3,000 vectors: fewer than MIN_SCAN
    big = _approximate(ids, vecs)
    per_list = N / big._ann.nlist
    assert big._nprobe(big._ann) * per_list >= 16_384 or big._nprobe(big._ann) == big._ann.nlist
    pinned = _approximate(ids[:3_000], vecs[:3_000], nprobe=4)
    assert pinned._nprobe(pinned._ann) == 4


def test_bulk_build_between_the_threshold_and_its_training_sample_is_approximate(data) -> None:
    # 12,000 vectors: the training sample (32 x 256 lists = 8,192) is below the 10,000 threshold;
    # the build must still read past the threshold before deciding, whatever the chunk size.
    ids, vecs = data
    for size in (700, 2_048, 5_000):
        index = AnnIndex.bulk(
            DIM, 12_000, _chunks(ids[:12_000], vecs[:12_000], size), _fetcher(ids, vecs), AnnParams(background=False)
        )
        assert not index.exact and not index.building and len(index) == 12_000
