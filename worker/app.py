"""The Celery application: `celery -A worker.app worker` consumes every queue the system uses.

The model is built in each pool process after fork (`worker_process_init`), never in the parent
and never per task. The parent only checks that the weights exist, so a worker without them stops
at once with a message saying how to provide them.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from kombu import Queue

from shared.connect import broker_redis
from shared.errors import ModelWeightsUnavailable
from shared.jobs import JobLifecycle, Jobs
from shared.jobs.scripts import SCRIPTS as JOB_SCRIPTS
from shared.logs import configure_logging, current_job
from shared.models.registry import get_model_spec
from shared.queueing import DEADLINE_QUEUE, INDEX_QUEUE, SEARCH_QUEUE, WEBHOOK_QUEUE, WEBHOOK_TASK, celery_config
from shared.shards import shard_queue
from worker.runtime import WorkerRuntime
from worker.settings import WorkerSettings
from worker.upkeep.heartbeat import Heartbeat
from worker.upkeep.watchdog import Watchdog, WatchdogPolicy
from worker.upkeep.webhooks import Dispatcher

log = logging.getLogger(__name__)

settings = WorkerSettings()


class SimsearchCelery(Celery):
    """The Celery app, holding what a process builds once: the pool process's runtime (model,
    stores, replicas) and the main process's daemon threads."""

    runtime: WorkerRuntime | None = None
    daemons: list[Heartbeat | Dispatcher | Watchdog]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemons = []


app = SimsearchCelery("simsearch", include=["worker.tasks"])
app.conf.update(
    celery_config(settings.broker, settings.task_visibility_timeout_s, settings.broker_master),
    # Searches and embedding are shared; a shard's searches go to the workers serving it.
    task_queues=[
        *((Queue(SEARCH_QUEUE), Queue(INDEX_QUEUE), Queue(WEBHOOK_QUEUE)) if settings.worker_embeds else ()),
        Queue(DEADLINE_QUEUE),
        *(Queue(shard_queue(i)) for i in settings.served_shard_list),
    ],
    worker_prefetch_multiplier=1,
    # Pool processes build the model in worker_process_init (seconds: TensorFlow, OpenVINO compile);
    # Celery's default of 4 s would kill and respawn them forever.
    worker_proc_alive_timeout=settings.process_start_timeout_s,
    worker_concurrency=settings.worker_concurrency,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_time_limit=settings.task_time_limit_s,
    # Room between the soft limit (remaining items fail with `timeout`) and the hard kill.
    task_soft_time_limit=settings.task_time_limit_s - max(5, settings.task_time_limit_s // 10),
    worker_hijack_root_logger=False,
)


def runtime_of(celery_app: Celery) -> WorkerRuntime:
    # Built lazily too, for pools that do not fork (solo, threads) and so send no process-init signal.
    if not isinstance(celery_app, SimsearchCelery):
        raise TypeError(f"tasks run on simsearch's Celery app, not {celery_app!r}")
    if celery_app.runtime is None:
        celery_app.runtime = WorkerRuntime.start(settings)
    return celery_app.runtime


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    # Connecting here stops Celery from installing its own handlers: one JSON format everywhere.
    configure_logging(settings.log_level, settings.log_format)


@signals.task_prerun.connect
def _job_context(args: tuple = (), **_: Any) -> None:
    current_job.set(args[0] if args else None)


@signals.task_postrun.connect
def _clear_job_context(**_: Any) -> None:
    current_job.set(None)


@signals.worker_init.connect
def _check_weights(**_: Any) -> None:
    if not settings.worker_embeds:
        return
    try:
        get_model_spec(settings.embedding_model).prepare(settings.embedding_weights, settings.cache_dir)
    except ModelWeightsUnavailable as exc:
        log.critical("cannot start: %s", exc.detail)
        raise SystemExit(f"simsearch worker cannot start: {exc.detail}") from exc


@signals.worker_process_init.connect
def _start_runtime(**_: Any) -> None:
    runtime_of(app)


@signals.worker_ready.connect
def _start_heartbeat(**_: Any) -> None:
    # In the main process, which holds the messages (the pool's children only run them).
    client = settings.redis(socket_timeout=5, health_check_interval=30)
    # The held messages' heartbeat goes to the broker's Redis (RabbitMQ redelivers on its own).
    broker = broker_redis(settings.broker, settings.broker_master, socket_timeout=5, health_check_interval=30)
    if broker is not None:
        app.daemons.append(Heartbeat(broker, settings.heartbeat_interval_s))
    if settings.worker_embeds:  # the workers that deliver callbacks also hand them out
        send = lambda job_id: app.send_task(WEBHOOK_TASK, [job_id], queue=WEBHOOK_QUEUE)  # noqa: E731
        app.daemons.append(Dispatcher(client, send))
        # ... and watch for jobs whose work was lost (worker/upkeep/watchdog.py).
        jobs = Jobs(client, JobLifecycle(settings.job_ttl_seconds), JOB_SCRIPTS)
        policy = WatchdogPolicy(settings.stall_s, settings.watchdog_max_redrives, settings.index_chunk_size)
        resend = lambda task, args, queue: app.send_task(task, args, queue=queue)  # noqa: E731
        app.daemons.append(Watchdog(client, jobs, resend, policy, settings.watchdog_interval_s))
    for daemon in app.daemons:
        daemon.start()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    for daemon in app.daemons:
        daemon.stop()
