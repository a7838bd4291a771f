"""Where an index chunk's time goes: wall seconds per named stage, logged with the chunk.

Stages are timed where they run on the task's own thread; work that overlaps them (renditions
written during the forward pass, uploads read ahead of decoding) shows up as the time the task
then waits for it, which is what it costs the chunk.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def rounded(self) -> dict[str, float]:
        return {name: round(value, 4) for name, value in self.seconds.items()}
