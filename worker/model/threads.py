"""Thread pools of the numeric libraries (BLAS, OpenMP) in a worker process.

A search is one small query: a team of threads per query buys it little, and every worker on the
host spinning one up oversubscribes the cores. So a worker process searches with SEARCH_THREADS
(default 1) and lends every core only to the rare heavy jobs (clustering, index training).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

from shared.ann import _faiss


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def limit_search_threads(threads: int) -> None:
    """Cap every loaded BLAS and OpenMP runtime at `threads` for this process (after fork)."""
    faiss = _faiss()  # loaded first: threadpoolctl limits only the runtimes already loaded
    threadpool_limits(limits=threads)
    faiss.omp_set_num_threads(threads)


@contextmanager
def all_cores() -> Iterator[None]:
    """Every core of this process for a heavy job; the search limit again afterwards."""
    with threadpool_limits(limits=cpus()):
        yield
