"""The metadata filter language: validation errors name the field; the worker's columns agree with
the reference evaluation on random metadata and filters, also after adds and deletes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from shared.filters import InvalidFilter, matches, parse
from worker.search.metadata_index import MetadataIndex


class Order:
    """An index's row order, as `MetadataIndex.mask` sees an AnnIndex."""

    def __init__(self, ids) -> None:
        self._ids = list(ids)
        self._row = {i: r for r, i in enumerate(self._ids)}

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def rows_of(self, ids) -> np.ndarray:
        return np.array([self._row.get(i, -1) for i in ids], dtype=np.int64)


PETS = [
    {"label": "cat", "year": 2021, "tags": ["indoor", "sleepy"], "exif": {"iso": 100}},
    {"label": "dog", "year": 2019.5, "tags": ["outdoor"], "score": 0.9},
    {"label": "cat", "year": "2020", "gps": None},
    {"label": "panda", "flag": True, "score": 1},
    {},
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"label": "cat"}, [0, 2]),
        ({"label": {"$in": ["dog", "panda"]}}, [1, 3]),
        ({"label": {"$ne": "cat"}}, [1, 3, 4]),
        ({"label": {"$nin": ["cat", "dog"]}}, [3, 4]),
        ({"year": {"$gte": 2020}}, [0]),  # "2020" is text: a number bound never matches it
        ({"year": {"$gt": "2019"}}, [2]),
        ({"year": {"$gte": 2019, "$lt": 2021}}, [1]),
        ({"tags": "outdoor"}, [1]),  # any element of a list
        ({"exif.iso": 100}, [0]),
        ({"gps": {"$exists": True}}, [2]),  # present, even as null
        ({"score": {"$exists": False}}, [0, 2, 4]),
        ({"score": 1.0}, [3]),  # 1 == 1.0
        ({"flag": 1}, []),  # but not true
        ({"flag": True}, [3]),
        ({"$or": [{"label": "dog"}, {"score": {"$gte": 1}}]}, [1, 3]),
        ({"$and": [{"label": "cat"}, {"tags": "sleepy"}]}, [0]),
        ({"label": "cat", "year": 2021}, [0]),  # several keys: AND
    ],
)
def test_reference_semantics(raw, expected):
    node = parse(raw)
    assert [n for n, m in enumerate(PETS) if matches(node, m)] == expected


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"price": {"$gte": [1]}}, "filter.price.$gte"),
        ({"price": {"$between": 1}}, "filter.price.$between"),
        ({"label": None}, "filter.label"),
        ({"label": {"$in": []}}, "filter.label.$in"),
        ({"label": {"$in": ["a", {"b": 1}]}}, "filter.label.$in[1]"),
        ({"$or": [{"label": "cat"}, {"size": {"$exists": "yes"}}]}, "filter.$or[1].size.$exists"),
        ({"$or": []}, "filter.$or"),
        ({"$near": 1}, "filter.$near"),
        ({"flag": {"$gt": True}}, "filter.flag.$gt"),
        ({"a..b": 1}, "filter.a..b"),
        ([1], "filter"),
        ({}, "filter"),
    ],
)
def test_errors_name_the_field(raw, named):
    with pytest.raises(InvalidFilter) as err:
        parse(raw)
    assert err.value.status_code == 422
    assert err.value.detail.startswith(named + ":"), err.value.detail


def test_limits():
    with pytest.raises(InvalidFilter, match="deeper"):
        node: dict = {"a": 1}
        for _ in range(10):
            node = {"$and": [node]}
        parse(node)
    with pytest.raises(InvalidFilter, match="at most 256"):
        parse({"$or": [{"a": n} for n in range(300)]})
    with pytest.raises(InvalidFilter, match="at most 1000"):
        parse({"a": {"$in": list(range(1001))}})


def _random_metadata(rng: random.Random):
    out = {}
    if rng.random() < 0.8:
        out["label"] = rng.choice(["cat", "dog", "panda", 1, True])
    if rng.random() < 0.6:
        out["year"] = rng.choice([2018, 2019, 2020.5, 2021, "2020", "2022-01-01"])
    if rng.random() < 0.5:
        out["tags"] = rng.sample(["a", "b", "c", 3], rng.randint(0, 3))
    if rng.random() < 0.3:
        out["exif"] = {"iso": rng.choice([100, 200, None])}
    return out or None


def _random_filter(rng: random.Random, depth: int = 0):
    if depth < 2 and rng.random() < 0.3:
        return {rng.choice(["$and", "$or"]): [_random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    path = rng.choice(["label", "year", "tags", "exif.iso", "missing"])
    value = rng.choice(["cat", "dog", 1, True, 2019, 2020, "2020", "a", 3, 100])
    op = rng.choice(["$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists", None])
    if op is None:
        return {path: value}
    if op in ("$in", "$nin"):
        return {path: {op: [value, rng.choice(["panda", 2021, "b"])]}}
    if op == "$exists":
        return {path: {op: rng.random() < 0.5}}
    if op.startswith(("$g", "$l")) and isinstance(value, bool):
        value = 2020
    return {path: {op: value}}


def test_columns_agree_with_the_reference_through_adds_and_deletes():
    rng = random.Random(7)
    docs = {f"id{n}": _random_metadata(rng) for n in range(400)}
    index = MetadataIndex(docs)
    read_calls = []

    def read(ids):
        read_calls.append(len(ids))
        return [docs.get(i) for i in ids]

    for round_ in range(6):
        order = list(docs)
        rng.shuffle(order)  # the index's row order is its own
        for _ in range(30):
            raw = _random_filter(rng)
            node = parse(raw)
            index.ensure(node, read)
            got = index.mask(node, Order(order), key="same")  # apply() must drop the row map
            want = np.array([matches(node, docs[i]) for i in order])
            assert (got == want).all(), raw
        # The replica's catch-up: some images deleted, some added, one re-added with new metadata.
        removed = rng.sample(sorted(docs), 40)
        for i in removed:
            del docs[i]
        added = [f"new{round_}-{n}" for n in range(50)]
        docs.update({i: _random_metadata(rng) for i in added})
        changed = rng.choice(sorted(set(docs) - set(added)))
        docs[changed] = {"label": "cat", "year": 2020}
        index.apply([*added, changed], removed, read)
    assert len(index) == len(docs)


def test_columns_load_only_the_fields_filters_use():
    docs = {"a": {"label": "cat", "year": 1}, "b": {"label": "dog"}}
    calls = []
    index = MetadataIndex(docs)

    def read(ids):
        calls.append(list(ids))
        return [docs[i] for i in ids]

    node = parse({"label": "cat"})
    index.ensure(node, read)
    index.ensure(node, read)
    assert len(calls) == 1  # a second filter on the same field reads nothing
    index.ensure(parse({"year": {"$gt": 0}}), read)
    assert len(calls) == 2
    assert index.mask(parse({"year": {"$gt": 0}}), Order(["b", "a", "zz"]), key=1).tolist() == [False, True, False]


def test_a_one_percent_filter_on_the_approximate_index_still_finds_k():
    """Pre-filtering through the IVF index (the filter's 1 % is above `exact_subset`, so the
    approximate path runs): every query gets k matches, all passing, nearly all the true top k."""
    pytest.importorskip("faiss")
    from bench.spread import synthetic
    from shared.ann import AnnIndex, AnnParams

    n, dim, k = 20_000, 256, 10
    vecs = synthetic(n, dim, seed=5)
    ids = [f"{i:032x}" for i in range(n)]
    rare = set(random.Random(3).sample(ids, n // 100))
    docs = {i: {"label": "rare" if i in rare else "common", "n": r} for r, i in enumerate(ids)}
    source = dict(zip(ids, vecs, strict=True))
    params = AnnParams(threshold=1_000, background=False, exact_subset=50)
    index = AnnIndex(dim, fetch_vectors=lambda want: np.stack([source[i] for i in want]), params=params)
    index.upsert(ids, vecs)
    assert not index.exact
    columns = MetadataIndex(index.ids)
    node = parse({"label": "rare"})
    columns.ensure(node, lambda want: [docs[i] for i in want])
    mask = columns.mask(node, index, key=0)
    assert mask.sum() == len(rare)
    allowed = np.array([i in rare for i in ids])
    recall = []
    for r in range(7, n, n // 50):
        hits = index.search(vecs[r], k, mask=mask)
        assert len(hits) == k and all(i in rare for i, _ in hits)
        truth = np.argsort(-np.where(allowed, vecs @ vecs[r], -np.inf))[:k]
        recall.append(len({i for i, _ in hits} & {ids[t] for t in truth}) / k)
    assert np.mean(recall) >= 0.95, np.mean(recall)


def test_huge_integers_neither_crash_the_columns_nor_pass_as_filter_values():
    docs = {"a": {"n": 10**400}, "b": {"n": -(10**400)}, "c": {"n": 5}}
    index = MetadataIndex(docs)
    node = parse({"n": {"$gt": 100}})
    index.ensure(node, lambda ids: [docs[i] for i in ids])
    assert index.mask(node, Order(["a", "b", "c"]), key=0).tolist() == [True, False, False]
    index.apply(["d"], [], lambda ids: [{"n": 10**500}])  # indexed after the column was loaded
    assert index.mask(node, Order(["a", "b", "c", "d"]), key=1).tolist() == [True, False, False, True]
    assert matches(node, {"n": 10**400})
    with pytest.raises(InvalidFilter, match=r"filter\.n\.\$gt: a number out of range"):
        parse({"n": {"$gt": 10**400}})


def test_a_field_no_image_has_costs_no_scan_and_columns_are_capped():
    from worker.search import metadata_index

    docs = {f"i{n}": {"label": "cat", "n": n} for n in range(10)}
    scans = []

    def read(ids):
        scans.append(len(ids))
        return [docs[i] for i in ids]

    index = MetadataIndex(docs)
    index.ensure(parse({"label": "cat"}), read)
    assert len(scans) == 1
    for n in range(100):  # random field names: empty columns, no further scan
        index.ensure(parse({f"nope{n}": 1}), read)
    assert len(scans) == 1
    assert len(index._columns) == metadata_index.MAX_COLUMNS
    docs["new"] = {"fresh": True}
    index.apply(["new"], [], read)  # a field first seen in a later image
    node = parse({"fresh": True})
    index.ensure(node, read)
    assert len(scans) == 3  # the add's read, then the field (known now) loaded
    assert index.mask(node, Order(["i0", "new"]), key=2).tolist() == [False, True]


def test_filter_text_errors_are_422():
    from api.bodies import text_filter

    for text, why in (("[" * 5000, "nested deeper"), ("{" * 70_000, "over 65536"), ("{x", "not valid JSON")):
        with pytest.raises(InvalidFilter, match=why):
            text_filter(text)
    assert text_filter('{"a": 1}') == {"a": 1}


def test_a_filter_reading_more_fields_than_are_held_still_runs():
    from worker.search import metadata_index

    many = metadata_index.MAX_COLUMNS + 10
    docs = {"a": {f"f{n}": n for n in range(many)}, "b": {"f3": 3}}
    index = MetadataIndex(docs)
    node = parse({"$or": [{f"f{n}": n} for n in range(many)]})
    index.ensure(node, lambda ids: [docs[i] for i in ids])
    assert index.mask(node, Order(["a", "b"]), key=0).tolist() == [True, True]
    index.ensure(parse({"f0": 0}), lambda ids: [docs[i] for i in ids])  # then trimmed to the cap
    assert len(index._columns) == metadata_index.MAX_COLUMNS


def test_lone_surrogates_and_repeated_form_fields_are_422():
    from starlette.datastructures import FormData

    from api.bodies import form_filter, text_filter

    with pytest.raises(InvalidFilter, match="lone surrogate"):
        text_filter('{"\\ud800": {"$foo": 1}}')
    with pytest.raises(InvalidFilter, match="one 'filter' field"):
        form_filter(FormData([("filter", '{"a": 1}'), ("filter", '{"b": 1}')]))
    assert form_filter(FormData([("filter", '{"a": 1}')])) == {"a": 1}


def test_after_a_change_filters_map_their_images_until_the_row_map_pays():
    ids = [f"i{n}" for n in range(64)]
    docs = {i: {"rare": n == 5, "half": n % 2 == 0} for n, i in enumerate(ids)}
    index = MetadataIndex(ids)
    order = Order(reversed(ids))
    calls = []
    real = order.rows_of
    order.rows_of = lambda want: calls.append(len(want)) or real(want)  # type: ignore[method-assign]
    rare, half = parse({"rare": True}), parse({"half": True})
    for node in (rare, half):
        index.ensure(node, lambda want: [docs[i] for i in want])
    want_rare = [i == "i5" for i in order.ids]
    want_half = [int(i[1:]) % 2 == 0 for i in order.ids]
    for _ in range(len(ids)):
        assert index.mask(rare, order, key=1).tolist() == want_rare
    assert calls == [1] * len(ids)  # one image mapped each time: as many as a row map costs
    assert index.mask(rare, order, key=1).tolist() == want_rare  # then the map is built...
    assert index.mask(half, order, key=1).tolist() == want_half
    assert len(calls) == len(ids)  # ...and used by every filter until the index changes
    assert index.mask(half, order, key=2).tolist() == want_half  # changed: 32 images mapped
    assert index.mask(half, order, key=2).tolist() == want_half  # 64 in all: still under a map's cost
    assert calls[len(ids) :] == [32, 32]
    assert index.mask(half, order, key=2).tolist() == want_half  # 96 would not be: the map
    assert len(calls) == len(ids) + 2
