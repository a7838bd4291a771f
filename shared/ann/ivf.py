"""The faiss side: a trained IVF index over labels, how to make one, and how to scan it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.ann.params import AnnParams


def _faiss() -> Any:
    import faiss  # imported lazily: exact mode, the API and most tests need no faiss

    return faiss


def nlist_for(n: int) -> int:
    """IVF lists for n vectors: a power of two near 2 * sqrt(n) (2048 at 1 M), 64 to 16384."""
    return int(min(16384, max(64, 2 ** round(math.log2(2 * math.sqrt(max(n, 1)))))))


def sample_size(params: AnnParams, n: int) -> int:
    """Vectors to train on for a collection of n."""
    return min(n, params.train_per_list * nlist_for(n))


def untrained(dim: int, params: AnnParams, n: int) -> Any:
    """An empty IVF index sized for n vectors, ready to train."""
    faiss = _faiss()
    codec = params.codec.format(m=dim // params.subvector)
    index = faiss.index_factory(dim, f"IVF{nlist_for(n)},{codec}", faiss.METRIC_INNER_PRODUCT)
    # k-means iterations beyond ~10 barely move recall after the exact re-rank, and each costs
    # a pass of sample x nlist x dim (at 1 M: ~3 s a pass on one core).
    index.cp.niter = params.train_iterations
    return index


@dataclass
class TrainedIvf:
    """A trained IVF-PQ index over labels, and what it was trained for."""

    index: Any  # faiss.IndexIVFPQFastScan
    trained_n: int
    centroids: np.ndarray = field(init=False)  # the IVF lists' centroids, to rank lists for filters

    def __post_init__(self) -> None:
        self.centroids = self.index.quantizer.reconstruct_n(0, self.index.nlist)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    def lists_of(self, size: int) -> np.ndarray:
        """Which IVF list each label (below `size`) is in; -1 for none."""
        faiss = _faiss()
        out = np.full(size, -1, dtype=np.int32)
        invlists = self.index.invlists
        for lst in range(self.nlist):
            m = invlists.list_size(lst)
            if m:
                out[faiss.rev_swig_ptr(invlists.get_ids(lst), m)] = lst
        return out

    def labels(
        self,
        q: np.ndarray,
        count: int,
        nprobe: int,
        allowed: np.ndarray | None = None,
        selector: Any = None,
        lists: np.ndarray | None = None,
    ) -> np.ndarray:
        """The `count` best labels by approximate inner product (-1 where fewer), scanning the
        `nprobe` lists nearest to q, or exactly `lists`. `allowed` (bool per label) restricts the
        labels; else `selector`, if given, does."""
        faiss = _faiss()
        params = faiss.SearchParametersIVF(nprobe=nprobe if lists is None else len(lists))
        if allowed is not None:
            # Both locals must outlive the search: faiss holds bare pointers to them.
            bits = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            params.sel = selector
        elif selector is not None:
            params.sel = selector
        if lists is None:
            _, labels = self.index.search(q[None], count, params=params)
            return labels
        # The lists are chosen here, not by the coarse quantizer (faiss's Python wrapper of
        # search_preassigned takes no search parameters, hence the direct call).
        qq = np.ascontiguousarray(q[None], dtype=np.float32)
        assign = np.ascontiguousarray(lists[None], dtype=np.int64)
        dist = np.zeros(assign.shape, dtype=np.float32)
        out_d = np.empty((1, count), dtype=np.float32)
        labels = np.empty((1, count), dtype=np.int64)
        sp = faiss.swig_ptr
        self.index.search_preassigned_c(
            1, sp(qq), count, sp(assign), sp(dist), sp(out_d), sp(labels), False, params, None
        )
        return labels
