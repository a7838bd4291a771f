"""Worker configuration, from the environment."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator

from shared.ann import AnnParams
from shared.imaging import DEFAULT_MAX_PIXELS
from shared.settings import ModelSettings
from shared.shards import MAX_SHARDS, parse_shards


class WorkerSettings(ModelSettings):
    # 'imagenet', a weights file path, or 'random' (benchmarks and plumbing tests only; never implied).
    embedding_weights: str = "imagenet"
    cache_dir: Path = Path(os.environ.get("SIMSEARCH_CACHE_DIR", Path.home() / ".cache" / "simsearch"))
    # auto | tensorflow | openvino (see worker/inference.py); auto | int8 | bf16 | f32.
    inference_backend: str = "auto"
    inference_precision: str = "auto"
    # Threads for the forward pass; 0 = the CPUs this process may use.
    inference_threads: int = Field(default=0, ge=0)
    worker_concurrency: int = Field(default=1, ge=1)
    max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    task_time_limit_s: int = Field(default=600, ge=10)
    process_start_timeout_s: float = Field(default=300, ge=4)
    replica_batch: int = Field(default=2000, ge=10)
    # Replicas (shared/ann.py, measured in bench/ann_choice.py): exact below ANN_THRESHOLD vectors,
    # above it an IVF index of 4-bit codes whose ANN_CANDIDATES best are re-ranked exactly.
    ann_threshold: int = Field(default=10_000, ge=1)
    ann_candidates: int = Field(default=100, ge=10, le=10_000)
    ann_nprobe: int = Field(default=0, ge=0)  # IVF lists scanned per query; 0: nlist / 64, at least 16
    # Threads (BLAS, OpenMP) one search may use. One query is small work: a second thread buys
    # little, while several workers on one host each spinning up a team per query oversubscribe
    # the cores (bench/shards.py: 4 shard workers on 2 cores, p50 69 ms with teams, 22 ms without).
    search_threads: int = Field(default=1, ge=1)
    # Write a replica snapshot to the blob store every SNAPSHOT_EVERY log entries (0: never).
    snapshot_every: int = Field(default=20_000, ge=0)

    # false: a search-only worker: no model (no TensorFlow, ~0.7 GB less), consumes only its shard
    # queues and the deadline queue; embedding (indexing, uploaded queries) is left to the others.
    worker_embeds: bool = True
    # Which shards' searches this worker answers (and holds replicas for): `all`, or e.g. `0-3`, `4,5`.
    worker_shards: str = "all"

    @field_validator("worker_shards")
    @classmethod
    def _valid_shards(cls, value: str) -> str:
        parse_shards(value)
        return value

    @property
    def served_shards(self) -> frozenset[int] | None:
        return parse_shards(self.worker_shards)

    @property
    def served_shard_list(self) -> list[int]:
        served = self.served_shards
        return sorted(served) if served is not None else list(range(MAX_SHARDS))

    @property
    def ann_params(self) -> AnnParams:
        return AnnParams(threshold=self.ann_threshold, candidates=self.ann_candidates, nprobe=self.ann_nprobe or None)

    @property
    def threads(self) -> int:
        if self.inference_threads:
            return self.inference_threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cpus // self.worker_concurrency)

    @property
    def heartbeat_interval_s(self) -> float:
        return self.task_visibility_timeout_s / 6
