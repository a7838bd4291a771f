"""Filters on a search: a mask as a boolean per row, and the IVF lists a filtered search scans."""

from __future__ import annotations

import numpy as np

from shared.ann.ivf import TrainedIvf
from shared.index import Mask, mask_array


def as_array(ids: list[str], mask: Mask) -> np.ndarray:
    """A mask (array or predicate) as a boolean per row of `ids`."""
    return mask_array(ids, mask) if callable(mask) else np.asarray(mask, dtype=bool)[: len(ids)]


def lists_to_scan(
    ann: TrainedIvf, lists_of_allowed: np.ndarray, q: np.ndarray, nprobe: int, n: int
) -> tuple[np.ndarray, int]:
    """The IVF lists holding allowed vectors (`lists_of_allowed`: each one's list), nearest
    centroid first, and how many of them to scan first.

    Enough lists are as many as hold the allowed vectors an unfiltered search scans in all
    (nprobe lists of n / nlist): a cluster filter's vectors sit in few lists, maybe far from the
    query, and a scattered filter's in many."""
    per_list = np.bincount(lists_of_allowed, minlength=ann.nlist)
    holding = np.flatnonzero(per_list)
    holding = holding[np.argsort(-(ann.centroids[holding] @ q), kind="stable")]
    enough = np.searchsorted(np.cumsum(per_list[holding]), nprobe * n / ann.nlist) + 1
    return holding, int(enough)
