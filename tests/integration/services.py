"""Start and stop real processes for integration tests: redis-server, Celery workers, the API."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

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
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
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


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.update(extra)
    return env


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
    """Redis, one worker and the API, sharing `env`; yields the API's base URL, stops all after."""
    redis_service, url = start_redis(workdir)
    services = [redis_service]
    try:
        services.append(start_worker(url, workdir, worker_name, ready_timeout, **env))
        api, base = start_api(url, workdir, **env)
        services.append(api)
        yield base
    finally:
        for service in reversed(services):
            service.stop()
