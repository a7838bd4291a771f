"""Everything a worker process holds: built once, after fork, and handed to the task functions."""

from __future__ import annotations

import logging
import os
import socket
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from shared.fetch import Fetcher
from shared.jobs import JobLifecycle, Jobs
from shared.jobs.scripts import SCRIPTS as JOB_SCRIPTS
from shared.models.base import NetworkEmbedder
from shared.models.registry import get_model_spec
from worker.context import JobContext
from worker.ingest.sources import Buckets, Sources
from worker.migrate_layout import legacy_collections
from worker.model.inference import build_embedder
from worker.model.threads import limit_search_threads
from worker.search.calibration import NoMatchPolicy
from worker.search.replica import ReplicaSet
from worker.search.snapshots import Snapshots
from worker.settings import WorkerSettings
from worker.store import WorkerStore

log = logging.getLogger(__name__)


def no_match_policy(settings: WorkerSettings) -> NoMatchPolicy:
    """The default threshold's rules: none for random weights, the model's floor for its own
    ImageNet weights only, and the deployment's percentile or else the model's."""
    return NoMatchPolicy(
        enabled=settings.no_match_calibration and settings.embedding_weights != "random",
        model_floors=settings.embedding_weights == "imagenet",
        percentile=settings.no_match_percentile or get_model_spec(settings.embedding_model).no_match_percentile,
    )


@dataclass
class WorkerRuntime:
    settings: WorkerSettings
    jobs: Jobs
    store: WorkerStore
    embedder: NetworkEmbedder | None  # None: a search-only worker (WORKER_EMBEDS=false)
    replicas: ReplicaSet
    sources: Sources
    preparers: Executor | None = None

    def context(self, job_id: str, served_by: str | None = None) -> JobContext | None:
        """Everything a task body needs for this job; None once the job has expired."""
        record = self.jobs.load(job_id)
        if record is None:
            return None
        return JobContext(
            job=record,
            jobs=self.jobs,
            store=self.store,
            embedder=self.embedder,
            replicas=self.replicas,
            max_pixels=self.settings.max_image_pixels,
            served_by=served_by,
            sources=self.sources,
            preparers=self.preparers,
        )

    @classmethod
    def start(cls, settings: WorkerSettings) -> WorkerRuntime:
        started = time.perf_counter()
        threads = settings.threads
        embedder = _embedder(settings) if settings.worker_embeds else None
        limit_search_threads(settings.search_threads)
        client = settings.redis(health_check_interval=30)
        worker = f"{socket.gethostname()}-{os.getpid()}"
        # Opened here, after fork: boto3 clients and thread pools do not survive one.
        blobs = settings.open_blob_store()
        replicas = (settings.redis_wait_replicas, settings.redis_wait_timeout_ms, settings.redis_outage_wait_s)
        store = WorkerStore(client, blobs, settings.log_maxlen, settings.job_ttl_seconds, worker, replicas)
        runtime = cls(
            settings=settings,
            jobs=Jobs(client, JobLifecycle(settings.job_ttl_seconds), JOB_SCRIPTS),
            store=store,
            embedder=embedder,
            replicas=ReplicaSet(
                store,
                settings.replica_batch,
                settings.ann_params,
                Snapshots(client, blobs, settings.snapshot_every) if settings.snapshot_every else None,
                no_match_policy(settings),
            ),
            sources=Sources(
                Fetcher(settings.fetch_policy),
                Buckets(settings.bucket_settings, settings.fetch_max_bytes),
                settings.fetch_concurrency,
            ),
            preparers=(
                ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="prepare")
                if embedder is not None and settings.decode_threads > 1
                else None
            ),
        )
        if not settings.redis_cluster and (legacy := legacy_collections(client)):
            log.error(
                "collections in the layout before per-shard keys are invisible until moved: %s; "
                "stop the service and run python -m worker.migrate",
                ", ".join(legacy[:10]),
            )
        if embedder is None:
            log.info(
                "worker process %d ready: model=none (search only, shards %s)", os.getpid(), settings.worker_shards
            )
            return runtime
        log.info(
            "worker process %d ready: model=%s weights=%s input=%d backend=%s/%s threads=%d (%.1fs)",
            os.getpid(),
            embedder.name,
            settings.embedding_weights,
            embedder.input_size,
            embedder.runner.backend,
            embedder.runner.precision,
            threads,
            time.perf_counter() - started,
        )
        return runtime


def _embedder(settings: WorkerSettings) -> NetworkEmbedder:
    _configure_tensorflow(settings.threads)
    spec = get_model_spec(settings.embedding_model)
    network = spec.build(settings.embedding_weights, settings.model_input_size, settings.cache_dir)
    return build_embedder(
        network, settings.inference_backend, settings.inference_precision, settings.cache_dir, settings.threads
    )


def _configure_tensorflow(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        # One pool sized to the cores this process owns: two pools would fight over two cores.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.warning("TensorFlow was already initialised in this process; thread settings unchanged")
