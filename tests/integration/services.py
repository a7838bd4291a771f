"""Start and stop real processes for integration tests: redis-server, Celery workers, the API."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import redis.asyncio

from shared.connect import connect_async

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout}s\n{tail}")


@dataclass
class Service:
    proc: subprocess.Popen
    log: Path
    name: str
    env: dict[str, str] = field(default_factory=dict)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _spawn(cmd: list[str], env: dict[str, str], log: Path, name: str) -> Service:
    fh = log.open("ab")
    # A service started with another checkout's PYTHONPATH (bench/scale.py --baseline-tree) runs
    # from it: `python -m` puts the working directory ahead of PYTHONPATH.
    code = Path(env.get("PYTHONPATH", ""))
    cwd = code if env.get("PYTHONPATH") and (code / "worker").is_dir() else ROOT
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return Service(proc=proc, log=log, name=name, env=env)


def start_redis(workdir: Path, appendonly: bool = False, port: int | None = None) -> tuple[Service, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = port or free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
    cmd += ["--appendonly", "yes" if appendonly else "no"]
    service = _spawn(cmd, dict(os.environ), workdir / f"redis-{port}.log", "redis")
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis.Redis.from_url(url).ping(), 15, "redis-server", service.proc, service.log)
    return service, url


def start_sentinel(workdir: Path, master: str, primary_port: int) -> tuple[Service, int]:
    """A Redis Sentinel watching the primary on `primary_port` as `master`: quorum 1, a primary
    unanswered for 1 s is down, and a replica is promoted within seconds."""
    port = free_port()
    conf = workdir / f"sentinel-{port}.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor {master} 127.0.0.1 {primary_port} 1\n"
        f"sentinel down-after-milliseconds {master} 1000\n"
        f"sentinel failover-timeout {master} 5000\n"
    )
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    service = _spawn([binary, str(conf), "--sentinel"], dict(os.environ), workdir / f"sentinel-{port}.log", "sentinel")
    wait_until(lambda: redis.Redis(port=port).ping(), 15, "sentinel", service.proc, service.log)
    return service, port


CLUSTER_SLOTS = 16384


def _cluster_port(taken: set[int]) -> int:
    """A free port below 55535 whose cluster bus port (port + 10000) is free too."""
    for _ in range(1000):
        port = free_port()
        if port >= 55535 or {port, port + 10000} & taken:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None  # the primary this node replicates, None for a primary
    slots: tuple[tuple[int, int], ...]  # inclusive ranges

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool({"fail", "fail?", "handshake", "noaddr"} & self.flags)

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)

    @classmethod
    def parse(cls, line: str) -> ClusterNodeInfo:
        fields = line.split()
        address = fields[1].split("@")[0]  # ip:port@cport[,hostname]
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being migrated or imported
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        return cls(
            node_id=fields[0],
            port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(fields[2].split(",")),
            primary_id=None if fields[3] == "-" else fields[3],
            slots=tuple(slots),
        )


@dataclass
class Cluster:
    """A Redis Cluster on loopback, started by start_cluster. Roles are read live from the nodes
    (CLUSTER NODES), so they are right after a failover too."""

    nodes: dict[int, Service]  # port -> redis-server
    url: str  # redis://127.0.0.1:P of the primary that owned slot 0 at start
    workdir: Path
    _killed: dict[int, ClusterNodeInfo] = field(default_factory=dict)
    _commands: dict[int, list[str]] = field(default_factory=dict)  # port -> how its server was started
    _replicas_at_kill: dict[int, set[str]] = field(default_factory=dict)

    @property
    def ports(self) -> list[int]:
        return list(self.nodes)

    def alive(self) -> list[int]:
        return [port for port, service in self.nodes.items() if service.proc.poll() is None]

    def node(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client of one node: it answers MOVED for slots it does not own."""
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)

    def _ask(self, port: int | None, *command: str):
        for candidate in [port] if port is not None else self.alive():
            with self.node(candidate) as r:
                try:
                    return r.execute_command(*command)
                except redis.ConnectionError:
                    if port is not None:
                        raise
        raise RuntimeError("no cluster node answers")

    def topology(self, via: int | None = None) -> list[ClusterNodeInfo]:
        """CLUSTER NODES as seen from `via` (default: the first node that answers)."""
        text = self._ask(via, "CLUSTER", "NODES")
        if isinstance(text, bytes):
            text = text.decode()
        return [ClusterNodeInfo.parse(line) for line in text.splitlines() if line.strip()]

    def info(self, port: int) -> dict[str, str]:
        """CLUSTER INFO of one node."""
        text = self._ask(port, "CLUSTER", "INFO")
        if isinstance(text, dict):
            return {k: str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def primaries(self, via: int | None = None) -> list[int]:
        """Ports of the primaries that serve slots and are not failed."""
        return sorted(n.port for n in self.topology(via) if n.is_primary and n.slots and not n.failed)

    def replicas_of(self, primary_port: int, via: int | None = None) -> list[int]:
        nodes = self.topology(via)
        primary = next(n for n in nodes if n.port == primary_port)
        return sorted(n.port for n in nodes if n.primary_id == primary.node_id and not n.failed)

    def replica_of(self, primary_port: int, via: int | None = None) -> int:
        """The (first) live replica of the primary on `primary_port`."""
        replicas = self.replicas_of(primary_port, via)
        if not replicas:
            raise LookupError(f"the primary on {primary_port} has no live replica")
        return replicas[0]

    def keyslot(self, key: str) -> int:
        return int(self._ask(None, "CLUSTER", "KEYSLOT", key))

    def primary_for_slot(self, slot: int, via: int | None = None) -> int:
        owners = [n.port for n in self.topology(via) if n.is_primary and not n.failed and n.owns(slot)]
        if len(owners) != 1:
            raise LookupError(f"slot {slot} has owners {owners}")
        return owners[0]

    def primary_for_key(self, key: str, via: int | None = None) -> int:
        """Port of the primary serving `key` now (CLUSTER KEYSLOT, then CLUSTER NODES)."""
        return self.primary_for_slot(self.keyslot(key), via)

    def wait_replicated(self, timeout: float = 15) -> None:
        """Wait until every live replica holds its primary's replication stream up to now (before a
        kill, so that nothing written before it can be lost with the primary)."""
        targets = {}
        for port in self.primaries():
            with self.node(port) as r:
                targets[port] = (r.info("replication")["master_repl_offset"], set(self.replicas_of(port)))

        def caught_up() -> bool:
            for port, (offset, replicas) in targets.items():
                with self.node(port) as r:
                    info = r.info("replication")
                acked = {v["port"] for k, v in info.items() if k.startswith("slave") and v["offset"] >= offset}
                if not replicas <= acked:
                    return False
            return True

        wait_until(caught_up, timeout, "replicas caught up with their primaries")

    def kill(self, port: int) -> None:
        """SIGKILL one node (no shutdown, no goodbye to the other nodes)."""
        nodes = self.topology(next(p for p in self.alive() if p != port))
        me = next(n for n in nodes if n.port == port)
        self._killed[port] = me
        self._replicas_at_kill[port] = {n.node_id for n in nodes if n.primary_id == me.node_id}
        service = self.nodes[port]
        os.killpg(service.proc.pid, signal.SIGKILL)
        service.proc.wait(5)

    def restart(self, port: int, timeout: float = 30) -> None:
        """Start a killed node again, as a supervisor would: it rejoins with its node identity
        (its cluster config file) and, its slots taken over meanwhile, becomes a replica of their
        new primary; returns once it is one, in sync."""
        service = _spawn(self._commands[port], dict(os.environ), self.nodes[port].log, f"cluster-{port}")
        self.nodes[port] = service

        def rejoined() -> bool:
            role = self.node(port).info("replication")
            return role.get("role") == "slave" and role.get("master_link_status") == "up"

        wait_until(rejoined, timeout, f"node {port} back as a replica", service.proc, service.log)

    def healthy(self, via: int) -> bool:
        info = self.info(via)
        return info.get("cluster_state") == "ok" and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)

    def wait_failover(self, dead_port: int, timeout: float = 30) -> int:
        """Wait until a replica of the primary killed on `dead_port` has been promoted: it is a
        primary serving the dead primary's slots, and every surviving node says so and reports
        cluster_state:ok with all slots served. Returns the new primary's port."""
        dead = self._killed.get(dead_port)
        if dead is None or not dead.is_primary:
            raise ValueError(f"no primary was killed on {dead_port} (Cluster.kill)")
        candidates = self._replicas_at_kill[dead_port]
        promoted: list[int] = []

        def done() -> bool:
            survivors = self.alive()
            owners = set()
            for port in survivors:
                if not self.healthy(port):
                    return False
                nodes = {n.node_id: n for n in self.topology(port)}
                for lo, hi in dead.slots:
                    owner = [n for n in nodes.values() if n.is_primary and not n.failed and n.owns(lo) and n.owns(hi)]
                    if len(owner) != 1 or owner[0].node_id not in candidates:
                        return False
                    owners.add(owner[0].port)
            if len(owners) != 1:
                return False
            (port,) = owners
            with self.node(port) as r:
                if r.info("replication")["role"] != "master":
                    return False
            promoted[:] = [port]
            return True

        wait_until(done, timeout, f"failover of the primary on {dead_port}")
        return promoted[0]

    def promote(self, replica_port: int, timeout: float = 15) -> None:
        """A manual failover (CLUSTER FAILOVER on the replica, as for maintenance: nothing is lost):
        returns once every live node says the replica is the primary of its former primary's slots."""
        nodes = self.topology(replica_port)
        me = next(n for n in nodes if n.port == replica_port)
        slots = next(n for n in nodes if n.node_id == me.primary_id).slots
        self._ask(replica_port, "CLUSTER", "FAILOVER")

        def done() -> bool:
            for port in self.alive():
                if not self.healthy(port):
                    return False
                owners = {(n.port, n.is_primary) for n in self.topology(port) for lo, _ in slots if n.owns(lo)}
                if owners != {(replica_port, True)}:
                    return False
            return True

        wait_until(done, timeout, f"manual failover to {replica_port}")

    def live_url(self) -> str:
        """redis://127.0.0.1:P of a live primary (`url` may name a killed one)."""
        return f"redis://127.0.0.1:{self.primaries()[0]}"

    def stop(self) -> None:
        for service in self.nodes.values():
            service.stop()


def start_cluster(
    workdir: Path, primaries: int = 3, replicas_per_primary: int = 1, node_timeout_ms: int = 2000
) -> Cluster:
    """A Redis Cluster of `primaries` x (1 + `replicas_per_primary`) redis-servers on loopback, made
    with `redis-cli --cluster create`; returns once every node reports cluster_state:ok with all
    16384 slots served and every replica is in sync with its primary."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    token = uuid.uuid4().hex[:8]  # config files unique even when a port comes back in the same workdir
    count = primaries * (1 + replicas_per_primary)
    nodes: dict[int, Service] = {}
    cluster = Cluster(nodes=nodes, url="", workdir=workdir)
    try:
        while len(nodes) < count:
            port = _cluster_port({p + d for p in nodes for d in (0, 10000)})
            cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / f"cluster-{token}-{port}.conf")]
            cmd += ["--cluster-node-timeout", str(node_timeout_ms), "--appendonly", "no", "--save", ""]
            cmd += ["--repl-diskless-sync-delay", "0"]  # replicas in sync at once, not after 5 s
            service = _spawn(cmd, dict(os.environ), workdir / f"cluster-{token}-{port}.log", f"cluster-{port}")
            try:
                wait_until(lambda p=port: redis.Redis(port=p).ping(), 15, "cluster node", service.proc, service.log)
            except RuntimeError:
                if "Address already in use" not in service.log.read_text():
                    raise
                continue  # the port was taken between the check and the bind: another one
            nodes[port] = service
            cluster._commands[port] = cmd
        create = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in nodes)]
        create += ["--cluster-replicas", str(replicas_per_primary), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")

        def ready() -> bool:
            for port in nodes:
                info = cluster.info(port)
                if not cluster.healthy(port) or info.get("cluster_known_nodes") != str(count):
                    return False
                # Gossip spreads the roles: every node must see every primary with all its replicas.
                seen = cluster.topology(port)
                serving = [n for n in seen if n.is_primary and n.slots]
                if len(serving) != primaries or any(n.failed for n in seen):
                    return False
                if any(sum(1 for r in seen if r.primary_id == p.node_id) != replicas_per_primary for p in serving):
                    return False
                with cluster.node(port) as r:
                    replication = r.info("replication")
                if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                    return False
            return True

        wait_until(ready, 30, "cluster_state:ok on every node")
        cluster.url = f"redis://127.0.0.1:{cluster.primary_for_slot(0)}"
        return cluster
    except BaseException:
        cluster.stop()
        raise


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


# SIMSEARCH_TEST_REDIS=cluster: the session's services and the small stacks keep their data on a
# Redis Cluster (3 primaries, 3 replicas, a broker of their own): `make test-cluster`.
ON_CLUSTER = os.environ.get("SIMSEARCH_TEST_REDIS") == "cluster"

# The environment services of a data store need besides REDIS_URL, by its URL: a Redis Cluster
# adds REDIS_CLUSTER and the broker of its own (`data_store`).
STORE_ENV: dict[str, dict[str, str]] = {}


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.update(STORE_ENV.get(redis_url, {}))
    env.update(extra)
    return env


def is_cluster(redis_url: str) -> bool:
    return STORE_ENV.get(redis_url, {}).get("REDIS_CLUSTER") == "true"


def data_client(redis_url: str) -> redis.Redis:
    """A client of the data store at `redis_url`: a RedisCluster when it is one."""
    if is_cluster(redis_url):
        return redis.cluster.RedisCluster.from_url(redis_url)  # type: ignore[return-value]
    return redis.Redis.from_url(redis_url)


def async_data_client(redis_url: str) -> redis.asyncio.Redis:
    return connect_async(redis_url, "", is_cluster(redis_url))


@contextmanager
def data_store(workdir: Path, cluster: bool) -> Iterator[str]:
    """The data store the session's services use: one Redis, or (`cluster`) a Redis Cluster of 3
    primaries and 3 replicas with a standalone broker beside it. Yields the data's URL."""
    if not cluster:
        service, url = start_redis(workdir)
        try:
            yield url
        finally:
            service.stop()
        return
    (workdir / "cluster").mkdir(exist_ok=True)
    nodes = start_cluster(workdir / "cluster")
    broker, broker_url = start_redis(workdir)
    STORE_ENV[nodes.url] = {"REDIS_CLUSTER": "true", "BROKER_URL": broker_url}
    try:
        yield nodes.url
    finally:
        STORE_ENV.pop(nodes.url, None)
        broker.stop()
        nodes.stop()


def start_worker(
    redis_url: str, workdir: Path, name: str, ready_timeout: float = 180, app: str = "worker.app", **extra: str
) -> Service:
    """A real Celery worker; `app="tests.integration.fault_worker"` for one with injected faults."""
    env = service_env(redis_url, **{"EMBEDDING_WEIGHTS": "random", **_blobs(workdir), **extra})
    log = workdir / f"worker-{name}.log"
    cmd = [sys.executable, "-m", "celery", "-A", app, "worker", "-n", f"{name}@%h", "-l", "INFO"]
    service = _spawn(cmd, env, log, name)
    # Ready once the pool process has built its model (logged by WorkerRuntime.start).
    wait_until(lambda: "ready: model=" in log.read_text(), ready_timeout, f"worker {name}", service.proc, log)
    return service


def _blobs(workdir: Path) -> dict[str, str]:
    # API and workers of one stack share one blob store; fsync buys nothing in a test directory.
    # (benchmarks measure the production default with BLOB_FSYNC=true in their environment).
    return {"BLOB_STORE_URL": f"file://{workdir / 'blobs'}", "BLOB_FSYNC": os.environ.get("BLOB_FSYNC", "false")}


def start_api(redis_url: str, workdir: Path, access_log: bool = True, **extra: str) -> tuple[Service, str]:
    port = free_port()
    env = service_env(redis_url, **{**_blobs(workdir), **extra})
    cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--no-proxy-headers"]  # as deployed: the API derives client addresses itself (TRUSTED_PROXIES)
    cmd += [] if access_log else ["--no-access-log"]
    service = _spawn(cmd, env, workdir / f"api-{port}.log", "api")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(base + "/healthz").status_code == 200, 30, "api", service.proc, service.log)
    return service, base


@contextmanager
def small_stack(workdir: Path, worker_name: str, ready_timeout: float = 180, **env: str) -> Iterator[str]:
    """The data store (`ON_CLUSTER`: a Redis Cluster), one worker and the API, sharing `env`;
    yields the API's base URL, stops all after."""
    services: list[Service] = []
    with data_store(workdir, ON_CLUSTER) as url:
        try:
            services.append(start_worker(url, workdir, worker_name, ready_timeout, **env))
            api, base = start_api(url, workdir, **env)
            services.append(api)
            yield base
        finally:
            for service in reversed(services):
                service.stop()
