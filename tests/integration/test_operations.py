"""Operations: Prometheus metrics from the API (with the workers' figures), JSON logs with job ids."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.images import photo_bytes
from tests.integration.client_helpers import index, search_bytes
from tests.integration.services import Service


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_cover_requests_jobs_queues_collections_and_workers(client: httpx.Client, collection: str) -> None:
    photos = [(f"m{i}.jpg", photo_bytes(16000 + i)) for i in range(5)]
    index(client, collection, photos)
    search_bytes(client, collection, photos[0][1])
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    samples = _samples(resp.text)
    assert samples[("simsearch_collection_images", (("collection", collection),))] == 5
    assert samples[("simsearch_jobs_total", (("status", "succeeded"), ("type", "index")))] >= 1
    assert samples[("simsearch_jobs_total", (("status", "created"), ("type", "search")))] >= 1
    assert ("simsearch_queue_depth", (("queue", "index"),)) in samples
    route = "/v1/collections/{collection}/images"
    assert samples[("simsearch_http_requests_total", (("method", "POST"), ("route", route), ("status", "202")))] >= 1
    indexed = [v for (name, _), v in samples.items() if name == "simsearch_images_indexed_total"]
    rates = [v for (name, _), v in samples.items() if name == "simsearch_embedding_images_per_second"]
    assert sum(indexed) >= 5 and rates and all(r > 0 for r in rates)


def test_worker_logs_are_json_with_job_ids(client: httpx.Client, collection: str, workers: list[Service]) -> None:
    job = index(client, collection, [("log.jpg", photo_bytes(16100))])
    lines = []
    for worker in workers:
        for raw in worker.log.read_text().splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
    mine = [line for line in lines if line.get("job_id") == job["job_id"]]
    assert mine, "no log line names the job"
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in mine)
