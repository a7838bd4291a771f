"""(Re)training the IVF index as the collection grows, shrinks or piles up removed codes.

Training runs in a background thread while the current structure keeps answering; vectors added
meanwhile are journaled and added to the new index before it takes over."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from shared.ann.ivf import TrainedIvf, _faiss, nlist_for, sample_size, untrained
from shared.ann.rows import Rows

log = logging.getLogger(__package__)  # one logger for the package, as when it was one module


@dataclass
class Build:
    """A background training: its frozen inputs, the vectors added since, its outcome."""

    labels: np.ndarray
    ids: list[str]
    thread: threading.Thread | None = None
    journal: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (labels, vectors) added
    result: TrainedIvf | None = None
    error: BaseException | None = None


class Training(Rows):
    @property
    def building(self) -> bool:
        """Whether a background training is under way (its outcome not yet taken over)."""
        return self._build is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background training to finish and take it over (tests, offline builds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._build is not None:  # taking one over may start the next (it grew meanwhile)
            build = self._build
            if build.thread is not None:
                build.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            self._poll()
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self._build is None

    def _maybe_build(self) -> None:
        """Start a training when the size calls for a (new) approximate index; go back to exact
        when the collection has shrunk well below the threshold."""
        if self._build is not None:
            return
        n, p = len(self._ids), self.params
        if self._ann is None:
            if n >= p.threshold:
                self._start_build()
        elif n < p.threshold // 2:
            self._to_exact()
        else:
            grown = n >= p.regrow * self._ann.trained_n and nlist_for(n) > self._ann.nlist
            cluttered = self._ann.index.ntotal - n > p.compact * max(n, 1)  # removed vectors' codes
            if grown or cluttered:
                self._start_build()

    def _start_build(self) -> None:
        n = len(self._ids)
        build = Build(labels=self._labels[:n].copy(), ids=list(self._ids))
        self._build = build
        if self.params.background:
            build.thread = threading.Thread(target=self._run_build, args=(build,), name="ann-build", daemon=True)
            build.thread.start()
        else:
            self._run_build(build)
            self._poll()

    def _run_build(self, build: Build) -> None:
        try:
            faiss = _faiss()
            faiss.omp_set_num_threads(self.params.build_threads)  # this thread's OpenMP teams only
            t0 = time.perf_counter()
            n = len(build.ids)
            index = untrained(self.dim, self.params, n)
            nlist = index.nlist
            rng = np.random.default_rng(n)
            sample = np.sort(rng.choice(n, sample_size(self.params, n), replace=False))
            index.train(self._build_vectors(build, sample))
            for start in range(0, n, 50_000):
                chunk = np.arange(start, min(n, start + 50_000))
                index.add_with_ids(self._build_vectors(build, chunk), build.labels[chunk])
            build.result = TrainedIvf(index, n)
            log.info("trained an IVF%d index over %d vectors in %.1fs", nlist, n, time.perf_counter() - t0)
        except BaseException as exc:  # reported to the owner's thread by _poll
            build.error = exc

    def _build_vectors(self, build: Build, positions: np.ndarray) -> np.ndarray:
        """Vectors of the frozen build inputs at `positions`: by label from the rows (exact mode or
        held), else fetched by id. A vector removed since the build began is zero: its label is
        removed again when the journal is replayed."""
        labels = build.labels[positions]
        with self._lock:
            rows = self._row_of[labels]
            local = self._matrix if self._matrix is not None else self._held
            if local is not None:
                out = np.zeros((len(labels), self.dim), dtype=np.float32)
                live = rows >= 0
                out[live] = local[rows[live]]
                return out
        got = np.asarray(self.fetch_vectors([build.ids[p] for p in positions]), dtype=np.float32)  # type: ignore[misc]
        return np.nan_to_num(got.reshape(len(positions), self.dim), nan=0.0)

    def _poll(self) -> None:
        """If a background training has finished, replay what changed meanwhile and switch to it."""
        build = self._build
        if build is None or (build.thread is not None and build.thread.is_alive()):
            return
        self._build = None
        if build.error is not None:
            log.error("training the approximate index failed; staying as is", exc_info=build.error)
            return
        assert build.result is not None
        with self._lock:
            index = build.result.index
            for labels, vectors in build.journal:
                index.add_with_ids(vectors, labels)
            # What was removed meanwhile (or read as zeros, being removed) is dead in the bitmap already.
            self._ann = build.result
            self._list_of = build.result.lists_of(len(self._row_of))
            self._lists_stale = False
            if self._matrix is not None:
                if self.hold:
                    self._held = self._matrix.astype(np.float16)  # same capacity as the other rows
                self._matrix = None  # the float32 rows are what the approximate index saves
        self._maybe_build()

    def _to_exact(self) -> None:
        n = len(self._ids)
        matrix = np.zeros((len(self._labels), self.dim), dtype=np.float32)  # rows share one capacity
        for start in range(0, n, 10_000):
            rows = np.arange(start, min(n, start + 10_000))
            matrix[rows] = self._source_vectors(rows)
        with self._lock:
            self._matrix = matrix
            self._held = None
            self._ann = None
