"""Worker configuration, from the environment."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from shared.imaging import DEFAULT_MAX_PIXELS
from shared.models.registry import MODELS
from shared.settings import ModelSettings


class WorkerSettings(ModelSettings):
    # 'imagenet', a weights file path, or 'random' (benchmarks and plumbing tests only; never implied).
    embedding_weights: str = "imagenet"
    input_size: int | None = Field(default=None, ge=32, le=1024)
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
    log_maxlen: int = Field(default=1_000_000, ge=1000)
    replica_batch: int = Field(default=2000, ge=10)
    # Fault injection for the crash-recovery tests: the worker process exits when it meets an
    # upload of this name. Refused outside ENVIRONMENT=test.
    test_crash_on_filename: str | None = None

    @model_validator(mode="after")
    def _faults_only_in_tests(self) -> WorkerSettings:
        if self.test_crash_on_filename and self.environment != "test":
            raise ValueError("TEST_CRASH_ON_FILENAME is only allowed with ENVIRONMENT=test")
        return self

    @property
    def model_input_size(self) -> int:
        return self.input_size or MODELS[self.embedding_model].default_input_size

    @property
    def threads(self) -> int:
        if self.inference_threads:
            return self.inference_threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cpus // self.worker_concurrency)
