"""An image counts as created only once a replica has it (REDIS_WAIT_REPLICAS, issue 23), and a
chunk that runs again after its add reports and keeps what one clean run would have.

Redis replicates asynchronously: an add reported before any replica holds it is lost if the
primary dies then. Real primary and replica on loopback; the replica is frozen (SIGSTOP) so that
it cannot acknowledge."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from shared import keys
from shared.blobs import open_blob_store
from shared.collections import ops
from shared.schemas import ImageRecord, rendition_key, utcnow
from tests.images import photo_bytes
from tests.integration.client_helpers import index, submit_images, wait_job
from tests.integration.services import port_of, start_api, start_redis, start_worker, wait_until
from worker.store import Embedding, NewImage, WorkerStore


def test_a_chunk_run_again_after_its_add_reports_and_keeps_its_images(redis_client: redis.Redis) -> None:
    blobs = open_blob_store(f"file://{tempfile.mkdtemp(prefix='blobs-')}", fsync=False)
    store = WorkerStore(redis_client, blobs, log_maxlen=1000, data_ttl_s=600)
    collection, embedding = f"again-{uuid.uuid4().hex[:8]}", Embedding("m", "m@224", 4)

    def image(job_id: str, filename: str) -> NewImage:
        record = ImageRecord(
            image_id="ab" * 16, filename=filename, format="JPEG", width=1, height=1, size=0,
            created_at=utcnow(), job_id=job_id,
        )  # fmt: skip
        return NewImage(record, np.array([1.0, 0.0, 0.0, 0.0], np.float32), rendition=b"jpeg")

    first = image("job-a", "a.jpg")
    assert store.add_images(collection, embedding, 0, [first]) == [1]
    # The same job's item again (its task redelivered before its outcome was recorded)
    assert store.add_images(collection, embedding, 0, [image("job-a", "a.jpg")]) == [1]
    assert blobs.get_many([rendition_key(collection, first.record)]) == [b"jpeg"]  # still named, still there
    # Another job, or another item of this job, with the same bytes: already there
    assert store.add_images(collection, embedding, 0, [image("job-b", "a.jpg")]) == [0]
    assert store.add_images(collection, embedding, 0, [image("job-a", "copy.jpg")]) == [0]
    assert blobs.get_many([rendition_key(collection, first.record)]) == [b"jpeg"]


def test_no_image_is_reported_created_before_a_replica_has_it(tmp_path: Path) -> None:
    primary_dir, replica_dir = tmp_path / "primary", tmp_path / "replica"
    primary_dir.mkdir()
    replica_dir.mkdir()
    primary, url = start_redis(primary_dir)
    replica, replica_url = start_redis(replica_dir)
    redis.Redis.from_url(replica_url).replicaof("127.0.0.1", port_of(url))
    wait_until(lambda: redis.Redis.from_url(url).info("replication")["connected_slaves"] >= 1, 15, "replica")
    worker = start_worker(url, tmp_path, "waits", REDIS_WAIT_REPLICAS="1", REDIS_WAIT_TIMEOUT_MS="300")
    api, base = start_api(url, tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            seed = index(client, "safe", [(f"r{i}.jpg", photo_bytes(43000 + i, size=(48, 40))) for i in range(3)])
            assert seed["status"] == "succeeded" and len(seed["result"]["created"]) == 3
            os.killpg(replica.proc.pid, signal.SIGSTOP)  # the replica stops acknowledging
            try:
                photos = [(f"w{i}.jpg", photo_bytes(43100 + i, size=(48, 40))) for i in range(4)]
                job_id = submit_images(client, "safe", photos)["job_id"]
                held_until = time.monotonic() + 4
                while time.monotonic() < held_until:
                    job = client.get(f"/v1/jobs/{job_id}").json()
                    assert job["progress"]["done"] == 0, job  # nothing reported while no replica has it
                    time.sleep(0.2)
            finally:
                os.killpg(replica.proc.pid, signal.SIGCONT)
            job = wait_job(client, job_id, timeout=60)
            assert job["status"] == "succeeded" and job["progress"] == {"total": 4, "done": 4, "failed": 0}
            assert len(job["result"]["created"]) == 4  # its own adds, not "existing", after the re-runs
            replica_client = redis.Redis.from_url(replica_url)
            wait_until(lambda: replica_client.hlen(keys.images("safe", 0)) == 7, 10, "the replica has every image")
    finally:
        api.stop()
        worker.stop()
        replica.stop()
        primary.stop()


def test_replicas_of_a_new_primary_passing_the_old_offset_do_not_count(redis_client: redis.Redis) -> None:
    """The add's WAIT fell short on the old primary; while the worker waits, Sentinel promotes a
    replica that may lack the add. Its replicas' offsets count the new primary's history: passing
    the old offset must not make the add count as stored (an acknowledged image was lost that way
    in a failover under load), while on the same primary it does."""
    blobs = open_blob_store(f"file://{tempfile.mkdtemp(prefix='blobs-')}", fsync=False)
    store = WorkerStore(redis_client, blobs, log_maxlen=1000, data_ttl_s=600, replicas=(1, 100, 1.0))
    primary = {"master_replid": "a" * 40, "slave0": {"ip": "127.0.0.1", "port": 1, "offset": 5000}}
    store.data.node_info = lambda key, section: primary  # type: ignore[method-assign]
    short = ops.ReplicationTimeout("1 of 1 within 100 ms", "c", "k", 4000, (None, [1]), replid="a" * 40)
    store._await_replicas(short)  # same history, its replica past the add: stored
    primary["master_replid"] = "b" * 40  # promoted: another history, offsets far past the old one
    started = time.monotonic()
    with pytest.raises(ops.ReplicationTimeout):
        store._await_replicas(short)
    assert time.monotonic() - started < 0.5  # given up at once, not after the patience
