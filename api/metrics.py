"""Prometheus metrics. Request counts and latency are measured here; jobs, queues, index sizes
and the workers' embedding figures are read from Redis at scrape time (workers write their
counters there, so one scrape of any API replica sees every worker)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import keys
from shared.collections import ops
from shared.queueing import INDEX_QUEUE, PRIORITY_STEPS, SEARCH_QUEUE, priority_queue
from shared.runner import AsyncRunner


class RequestMetrics:
    """Request counts and latency by route template (not by raw path)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "simsearch_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "simsearch_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


class HttpMetrics:
    """Pure ASGI middleware recording every request that reaches the framework."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    @staticmethod
    def _route(scope: Scope) -> str:
        # The router records the matched route in the scope; the gallery's files share one label.
        route = scope.get("route")
        return getattr(route, "path", None) or ("static" if scope.get("root_path") is not None else "unmatched")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.metrics.record(scope["method"], self._route(scope), status, time.perf_counter() - started)


class _Snapshot:
    """A collector over figures already fetched from Redis (collectors must be synchronous)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def queue_depths(broker: Redis | None) -> dict[str, int]:
    """Tasks waiting per queue, over its priority lists (`index`, `index:1` … `index:9`); none
    without a Redis broker (RabbitMQ reports its own)."""
    if broker is None:
        return {}
    names = {q: [priority_queue(q, p) for p in PRIORITY_STEPS] for q in (INDEX_QUEUE, SEARCH_QUEUE)}
    pipe = broker.pipeline(transaction=False)
    for lists in names.values():
        for name in lists:
            pipe.llen(name)
    lengths = iter(await pipe.execute())
    return {q: sum(next(lengths) for _ in lists) for q, lists in names.items()}


async def redis_metrics(redis: Redis, broker: Redis | None) -> list[Metric]:
    names = sorted(_s(n) for n in await redis.smembers(keys.COLLECTIONS))
    workers = [_s(k) async for k in redis.scan_iter(match=keys.WORKER_METRICS_PREFIX + "*", count=500)]
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.JOB_COUNTS)
    for worker in workers:
        pipe.hgetall(worker)
    jobs, *worker_stats = await pipe.execute()
    depths = await queue_depths(broker)
    sizes = await AsyncRunner(redis, {}).run(ops.image_counts(names))

    job_family = CounterMetricFamily(
        "simsearch_jobs", "Jobs created, and jobs by final status", labels=["type", "status"]
    )
    for field, count in jobs.items():
        job_type, _, status = _s(field).partition(":")
        job_family.add_metric([job_type, status], float(count))
    queue = GaugeMetricFamily("simsearch_queue_depth", "Tasks waiting in a queue", labels=["queue"])
    for name, depth in depths.items():
        queue.add_metric([name], float(depth))
    size = GaugeMetricFamily("simsearch_collection_images", "Images in a collection", labels=["collection"])
    for name, count in zip(names, sizes, strict=True):
        size.add_metric([name], float(count))

    per_worker = {
        "images_indexed": CounterMetricFamily("simsearch_images_indexed", "Images added", labels=["worker"]),
        "batches": CounterMetricFamily("simsearch_embedding_batches", "Forward passes", labels=["worker"]),
        "images": CounterMetricFamily("simsearch_embedded_images", "Images embedded", labels=["worker"]),
        "embed_seconds": CounterMetricFamily(
            "simsearch_embedding_seconds", "Time in forward passes", labels=["worker"]
        ),
        "last_batch_seconds": GaugeMetricFamily(
            "simsearch_embedding_last_batch_seconds", "Latency of the last forward pass", labels=["worker"]
        ),
        "last_images_per_second": GaugeMetricFamily(
            "simsearch_embedding_images_per_second", "Throughput of the last forward pass", labels=["worker"]
        ),
    }
    for key, stats in zip(workers, worker_stats, strict=True):
        worker = key.removeprefix(keys.WORKER_METRICS_PREFIX)
        fields = {_s(k): float(v) for k, v in stats.items()}
        for field, family in per_worker.items():
            if field in fields:
                family.add_metric([worker], fields[field])
    return [job_family, queue, size, *per_worker.values()]


async def render(registry: CollectorRegistry, redis: Redis, broker: Redis | None) -> bytes:
    snapshot = CollectorRegistry()
    snapshot.register(_Snapshot(await redis_metrics(redis, broker)))
    return generate_latest(registry) + generate_latest(snapshot)
