"""Worker configuration, from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator

from shared.ann import AnnParams
from shared.fetch import FetchPolicy
from shared.models.caches import DEFAULT_CACHE_DIR
from shared.settings import ModelSettings
from shared.shards import MAX_SHARDS, parse_shards
from worker.ingest.archives import ArchiveLimits
from worker.ingest.sources import BucketSettings
from worker.model.threads import cpus


class WorkerSettings(ModelSettings):
    # 'imagenet', a weights file path, or 'random' (benchmarks and plumbing tests only; never implied).
    embedding_weights: str = "imagenet"
    # CACHE_DIR, else SIMSEARCH_CACHE_DIR (the name the models' own code reads: shared.models.caches.ModelCaches).
    cache_dir: Path = Field(DEFAULT_CACHE_DIR, validation_alias=AliasChoices("cache_dir", "simsearch_cache_dir"))
    # auto | tensorflow | openvino (see worker/model/inference.py); auto | int8 | bf16 | f32.
    inference_backend: str = "auto"
    inference_precision: str = "auto"
    # Threads for the forward pass; 0 = the CPUs this process may use.
    inference_threads: int = Field(default=0, ge=0)
    # Threads that decode and reduce a chunk's images (Pillow releases the GIL while it decodes,
    # resizes and encodes); 0 = as many as the forward pass. 1: one after another.
    prepare_threads: int = Field(default=0, ge=0)
    worker_concurrency: int = Field(default=1, ge=1)
    task_time_limit_s: int = Field(default=600, ge=10)
    process_start_timeout_s: float = Field(default=300, ge=4)
    replica_batch: int = Field(default=2000, ge=10)
    # Replicas (shared/ann/, measured in bench/ann_choice.py): exact below ANN_THRESHOLD vectors,
    # above it an IVF index of 4-bit codes whose ANN_CANDIDATES best are re-ranked exactly.
    ann_threshold: int = Field(default=10_000, ge=1)
    ann_candidates: int = Field(default=100, ge=10, le=10_000)
    ann_nprobe: int = Field(default=0, ge=0)  # IVF lists scanned per query; 0: nlist / 64, at least 16
    # Threads (BLAS, OpenMP) one search may use. One query is small work: a second thread buys
    # little, while several workers on one host each spinning up a team per query oversubscribe
    # the cores (bench/shards.py: 4 shard workers on 2 cores, p50 69 ms with teams, 22 ms without).
    search_threads: int = Field(default=1, ge=1)
    # A search without min_similarity refuses matches below the collection's calibrated threshold
    # (worker/search/calibration.py). Never with EMBEDDING_WEIGHTS=random: such similarities mean nothing.
    # A task that loses Redis (store and broker) waits this long for it, then runs again
    # (worker/upkeep/outages.py); kept under the task's soft time limit.
    redis_outage_wait_s: float = Field(default=300.0, ge=1)
    # The job watchdog (worker/upkeep/watchdog.py): a job quiet this long has its unfinished work sent
    # again (0: 1.5 x TASK_TIME_LIMIT_S + 60, so never work a live task is still on), at most
    # WATCHDOG_MAX_REDRIVES times before the rest of it fails with `work_lost`.
    job_stall_s: float = Field(default=0, ge=0)
    # Redis replicates asynchronously: an image counts as created only once its add reached this
    # many replicas (WAIT), within REDIS_WAIT_TIMEOUT_MS; short of that the chunk waits and runs
    # again, like a Redis outage. 0: report at once (one Redis, or loss of the last writes accepted).
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1)
    watchdog_interval_s: float = Field(default=30.0, gt=0)
    watchdog_max_redrives: int = Field(default=3, ge=1)
    no_match_calibration: bool = True
    # The share (%) of the collection's own images that would find no match: 1 keeps 99 % of
    # photos like the collection's; higher refuses more photos of kinds the collection lacks.
    # Unset: the model's own (shared/models/registry.py), measured with bench/no_match.py.
    no_match_percentile: float | None = Field(default=None, gt=0, lt=50)
    # Write a replica snapshot to the blob store every SNAPSHOT_EVERY log entries (0: never).
    snapshot_every: int = Field(default=20_000, ge=0)

    # false: a search-only worker: no model (no TensorFlow, ~0.7 GB less), consumes only its shard
    # queues and the deadline queue; embedding (indexing, uploaded queries) is left to the others.
    worker_embeds: bool = True
    # Which shards' searches this worker answers (and holds replicas for): `all`, or e.g. `0-3`, `4,5`.
    worker_shards: str = "all"

    # Imports (URL lists, search by URL, callbacks): see shared/fetch.py. FETCH_ALLOW_PRIVATE lets
    # workers reach loopback/private addresses: for tests and closed networks only.
    fetch_allow_private: bool = False
    fetch_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    fetch_connect_timeout_s: float = Field(default=5.0, gt=0)
    fetch_read_timeout_s: float = Field(default=15.0, gt=0)
    fetch_total_timeout_s: float = Field(default=60.0, gt=0)
    fetch_per_host: int = Field(default=4, ge=1, le=64)
    fetch_concurrency: int = Field(default=8, ge=1, le=64)
    # Archives: guards against bombs (worker/ingest/archives.py).
    archive_max_members: int = Field(default=100_000, ge=1)
    archive_max_expanded_bytes: int = Field(default=8 << 30, ge=1 << 20)
    archive_max_ratio: float = Field(default=200.0, gt=1)
    # Bucket imports: which buckets, and how to reach them (None: the AWS chain).
    import_s3_endpoint_url: str | None = None
    import_s3_region: str | None = None
    import_s3_access_key_id: str | None = None
    import_s3_secret_access_key: SecretStr | None = None
    # Completion callbacks (worker/upkeep/webhooks.py; WEBHOOK_SECRET is a common setting).
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    webhook_backoff_s: float = Field(default=2.0, gt=0)

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
        return max(1, cpus() // self.worker_concurrency)

    @property
    def decode_threads(self) -> int:
        return self.prepare_threads or self.threads

    @property
    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            max_bytes=self.fetch_max_bytes,
            connect_timeout_s=self.fetch_connect_timeout_s,
            read_timeout_s=self.fetch_read_timeout_s,
            total_timeout_s=self.fetch_total_timeout_s,
            allow_private=self.fetch_allow_private,
            per_host=self.fetch_per_host,
        )

    @property
    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_members=self.archive_max_members,
            max_total_bytes=self.archive_max_expanded_bytes,
            max_member_bytes=self.fetch_max_bytes,
            max_ratio=self.archive_max_ratio,
        )

    @property
    def bucket_settings(self) -> BucketSettings:
        secret = self.import_s3_secret_access_key
        return BucketSettings(
            endpoint_url=self.import_s3_endpoint_url,
            region=self.import_s3_region,
            access_key_id=self.import_s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            buckets=self.import_buckets,
        )

    @property
    def heartbeat_interval_s(self) -> float:
        return self.task_visibility_timeout_s / 6

    @property
    def stall_s(self) -> float:
        return self.job_stall_s or self.task_time_limit_s * 1.5 + 60
