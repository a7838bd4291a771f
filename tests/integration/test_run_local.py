"""`make run`'s script (infra/run-local.sh) starts redis, a worker and the API, which listens on
127.0.0.1 only unless HOST says otherwise; what it stores stays in its STATE_DIR; it stops Redis
last, so nothing complains of a lost connection on the way down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.images import photo_bytes
from tests.integration.client_helpers import index
from tests.integration.services import free_port

ROOT = Path(__file__).parents[2]


def _listening(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.laddr.port == port}


def test_run_local_serves_on_loopback_only(tmp_path: Path) -> None:
    api_port, redis_port = free_port(), free_port()
    env = dict(os.environ)
    for name in ("HOST", "BLOB_STORE_URL"):
        env.pop(name, None)
    env.update(
        PYTHON=sys.executable,
        API_PORT=str(api_port),
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        STATE_DIR=str(tmp_path / "state"),
        EMBEDDING_MODEL="resnet50",
        EMBEDDING_WEIGHTS="random",
        SIMSEARCH_CACHE_DIR=str(tmp_path / "cache"),
    )
    log = (tmp_path / "run-local.log").open("w")
    proc = subprocess.Popen(
        [str(ROOT / "infra" / "run-local.sh")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "run-local.log").read_text()
            time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "run-local.log").read_text())
        assert _listening(api_port) == {"127.0.0.1"}
        assert _listening(redis_port) == {"127.0.0.1"}
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as client:
            assert index(client, "local", [("a.jpg", photo_bytes(5))])["status"] == "succeeded"
        assert list((tmp_path / "state" / "blobs").rglob("*.jpg")), "the rendition is not under STATE_DIR"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in its terminal
        proc.wait(timeout=60)
        log.close()
        for p in psutil.process_iter(["cmdline"]):  # Redis runs in a session of its own
            line = " ".join(p.info["cmdline"] or [])
            if "redis-server" in line and (f":{redis_port}" in line or f"--port {redis_port}" in line):
                p.kill()
                raise AssertionError("redis-server outlived run-local.sh")
    output = (tmp_path / "run-local.log").read_text()
    assert f"API on http://127.0.0.1:{api_port}" in output
    assert "Error 111" not in output and "Connection refused" not in output, output[-2000:]
