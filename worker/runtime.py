"""Everything a worker process holds: built once, after fork, and handed to the task functions."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import redis

from shared.models.base import NetworkEmbedder
from shared.models.registry import get_model_spec
from shared.schemas import JobInput
from worker.inference import build_embedder
from worker.replica import ReplicaSet
from worker.settings import WorkerSettings
from worker.store import WorkerStore

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: WorkerSettings
    store: WorkerStore
    embedder: NetworkEmbedder
    replicas: ReplicaSet

    def fault_hook(self, item: JobInput) -> None:
        if self.settings.test_crash_on_filename and item.filename == self.settings.test_crash_on_filename:
            log.warning("test fault: exiting on %s", item.filename)
            os._exit(70)

    @classmethod
    def start(cls, settings: WorkerSettings) -> WorkerRuntime:
        started = time.perf_counter()
        threads = settings.threads
        _configure_tensorflow(threads)
        spec = get_model_spec(settings.embedding_model)
        network = spec.build(settings.embedding_weights, settings.model_input_size, settings.cache_dir)
        embedder = build_embedder(
            network, settings.inference_backend, settings.inference_precision, settings.cache_dir, threads
        )
        client = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
        runtime = cls(
            settings=settings,
            store=WorkerStore(
                client, settings.job_ttl_seconds, settings.log_maxlen, worker=f"{socket.gethostname()}-{os.getpid()}"
            ),
            embedder=embedder,
            replicas=ReplicaSet(client, settings.replica_batch),
        )
        log.info(
            "worker process %d ready: model=%s weights=%s input=%d backend=%s/%s threads=%d (%.1fs)",
            os.getpid(),
            spec.name,
            settings.embedding_weights,
            embedder.input_size,
            embedder.runner.backend,
            embedder.runner.precision,
            threads,
            time.perf_counter() - started,
        )
        return runtime


def _configure_tensorflow(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        # One pool sized to the cores this process owns: two pools would fight over two cores.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.warning("TensorFlow was already initialised in this process; thread settings unchanged")
