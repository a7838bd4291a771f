"""The scale benchmark in small (bench/scale.py): 10,000 synthetic vectors shaped like real
embeddings, through the real storage path, one worker, measured through the API, and a worker
restart that must answer from the snapshot exactly as before."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_scale_benchmark_in_small() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench.scale import run

    figures = run(10_000, 1280, queries=50)
    print(figures)
    assert figures["recall_at_10"] >= 0.97
    # 10,000 vectors is the default ANN threshold: the replica is approximate, so the worker wrote a
    # snapshot, and the restarted worker loaded it and answers exactly as the first one did.
    assert figures["snapshot"] == {"version": 10_000, "count": 10_000}
    assert figures["restored_from_snapshot"] and figures["restart_identical"] == 1.0
    assert figures["redis_bytes_per_image"] <= 10 * 1024
    assert figures["cold_start_s"] < 60
    assert figures["search_p95_ms"] < 1000  # a sanity bound; the targets are the benchmark's
