"""The approximate index's tuning, and the types its callers hand it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# fetch_vectors(ids) -> float32 (len(ids), dim), L2-normalised: the source-of-truth vectors. A row
# of NaN means the vector is gone (deleted after the replica last synced): that candidate is dropped.
FetchVectors = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class AnnParams:
    # Exact below this many vectors. 1280-d, one core (bench/ann_choice.py threshold), p50 exact vs
    # approximate with the re-rank fetched from Redis: 5k 1.7 vs 2.1 ms, 10k 3.0 vs 1.4 ms, 20k 6.1
    # vs 1.5 ms, 100k 38 vs 2.8 ms. Below 10k exact is as fast and exact; above, it is not, and its
    # float32 matrix costs 5 KB a vector.
    threshold: int = 10_000
    candidates: int = 100  # C, re-ranked exactly; recall@10 >= 0.99 at 1 M with C = 100
    nprobe: int | None = None  # IVF lists scanned per query; None: nlist / 64, >= 16, >= MIN_SCAN vectors
    # The IVF lists' codes: "PQ{m}x4fs" is 4-bit product quantisation in fast-scan layout with m
    # = dim / subvector codes (dim / 4 bytes per vector with subvector = 2); "SQ4" / "SQ8" also work.
    codec: str = "PQ{m}x4fs"
    subvector: int = 2
    compact: float = 0.25  # rebuild when removed-but-still-coded vectors exceed this share of live ones
    regrow: float = 4.0  # retrain when the collection has grown this much since the last training
    train_per_list: int = 32  # training sample per IVF list (k-means cost grows with the sample)
    train_iterations: int = 10  # k-means passes over that sample
    # A filter allowing at most this many vectors is searched exactly over them (fetching 1,000
    # float16 vectors from Redis takes ~6 ms).
    exact_subset: int = 1_000
    background: bool = True  # train in a thread (False: inline, for tests and offline builds)
    build_threads: int = 1  # the other core keeps answering queries and running the model


def fetcher(
    get_raw: Callable[[list[str]], Sequence[bytes | None]],
    decode_many: Callable[[Sequence[bytes], int], np.ndarray],
    dim: int,
) -> FetchVectors:
    """A `fetch_vectors` from a raw getter (e.g. one HMGET of the collection's vectors hash) and a
    decoder (e.g. shared.vectors.decode_many): a missing vector becomes a row of NaN."""

    def fetch(ids: list[str]) -> np.ndarray:
        raw = get_raw(ids)
        out = np.full((len(ids), dim), np.nan, dtype=np.float32)
        present = [k for k, r in enumerate(raw) if r is not None]
        if present:
            out[present] = decode_many([raw[k] for k in present], dim)  # type: ignore[misc]
        return out

    return fetch
