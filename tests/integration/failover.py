"""What the failover tests share: a Redis primary with replicas behind a Sentinel, and a batch of
images indexed through the kill of a node."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from tests.integration.client_helpers import submit_images, wait_job, wait_progress
from tests.integration.services import Service, port_of, start_redis, start_sentinel, wait_until


@dataclass
class SentinelGroup:
    primary: Service
    replicas: list[Service]
    sentinel_port: int
    sentinel: Service | None = None
    replica_ports: list[int] = field(default_factory=list)

    def story(self, *logs: Service) -> str:
        """What happened, for a failure's message: Sentinel's failover events (which replica it
        chose), each surviving node's role and replication offset, and the warnings in `logs`."""
        lines = []
        if self.sentinel is not None:
            events = [line for line in self.sentinel.log.read_text().splitlines() if " +" in line or " -" in line]
            lines += ["sentinel:", *events[-30:]]
        for port in self.replica_ports:
            try:
                info = redis.Redis(port=port, socket_timeout=2).info("replication")
                offsets = info.get("master_repl_offset"), info.get("slave_repl_offset")
                lines.append(f"node :{port}: role {info.get('role')}, offsets {offsets}")
            except redis.RedisError as exc:
                lines.append(f"node :{port}: {exc}")
        for service in logs:
            text = service.log.read_text(errors="replace").splitlines()
            lines += [f"{service.name} warnings:", *[t for t in text if "WARNING" in t or "ERROR" in t][-20:]]
        return "\n".join(lines)

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.sentinel_port}"


@contextmanager
def sentinel_group(workdir: Path, master: str, replicas: int = 1) -> Iterator[SentinelGroup]:
    """A primary (AOF on) with `replicas` attached, watched by one Sentinel as `master`."""
    services: list[Service] = []
    try:
        (workdir / "primary").mkdir()
        primary, primary_url = start_redis(workdir / "primary", appendonly=True)
        services.append(primary)
        attached, ports = [], []
        for i in range(replicas):
            (workdir / f"replica{i}").mkdir()
            replica, url = start_redis(workdir / f"replica{i}", appendonly=True)
            services.append(replica)
            attached.append(replica)
            ports.append(port_of(url))
            redis.Redis.from_url(url).replicaof("127.0.0.1", port_of(primary_url))
        wait_until(
            lambda: redis.Redis.from_url(primary_url).info("replication")["connected_slaves"] >= replicas,
            15,
            "replicas attached",
        )
        sentinel, port = start_sentinel(workdir, master, port_of(primary_url))
        services.append(sentinel)
        yield SentinelGroup(primary, attached, port, sentinel, ports)
    finally:
        for service in reversed(services):
            service.stop()


def promotion_of(sentinel_port: int, master: str) -> Callable[[], None]:
    """Note `master`'s current primary now; the function returned waits until Sentinel names another."""
    from redis.sentinel import Sentinel

    sentinel = Sentinel([("127.0.0.1", sentinel_port)])
    first = sentinel.discover_master(master)
    return lambda: wait_until(lambda: sentinel.discover_master(master) != first, 30, f"a new primary of {master}")


def batch_through_a_kill(
    client: httpx.Client,
    collection: str,
    photos: list[tuple[str, bytes]],
    kill: Callable[[], None],
    recovered: Callable[[], None],
    timeout: float = 180,
) -> tuple[dict, float]:
    """Index `photos` in one request, run `kill` once 40 are done, wait for `recovered` (a
    promotion), then for the job. Returns the job and the seconds from the kill to its end."""
    job_id = submit_images(client, collection, photos)["job_id"]
    wait_progress(client, job_id, 40)
    kill()
    killed = time.monotonic()
    recovered()
    job = wait_job(client, job_id, timeout=timeout)
    return job, time.monotonic() - killed
