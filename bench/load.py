"""Polling under load: 50 clients poll job status (wrk, 50 connections) while a 1,000-image batch
is embedded by one worker; compared with the same batch embedded with nobody polling.

    python bench/load.py --data ../shared/datasets/animals

Each client polls `--rate` times a second (default 25: 1,250 polls/s from 50 clients; 0 = as fast
as possible). Prints polls/s, poll latency p50/p99 (from wrk) and the batch's time with and
without polling.
Needs `wrk` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import Service, labelled_images  # noqa: E402


def timed_batch(service: Service, collection: str, files: list[tuple[str, bytes]], on_submit=None) -> float:
    started = time.perf_counter()
    parts = [("files", (name, data, "image/jpeg")) for name, data in files]
    job_id = service.http.post(f"/v1/collections/{collection}/images", files=parts).raise_for_status().json()["job_id"]
    if on_submit:
        on_submit(job_id)
    job = service.wait(job_id)
    assert job["status"] == "succeeded", job["errors"][:3]
    return time.perf_counter() - started


def wrk(url: str, seconds: int, connections: int, per_client_hz: float, out: dict) -> None:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if per_client_hz > 0:
        # wrk's delay() hook paces each connection: clients that poll at a rate, not a flood.
        script = Path(tempfile.mkstemp(suffix=".lua")[1])
        script.write_text(f"function delay() return {1000.0 / per_client_hz:.1f} end\n")
        cmd[1:1] = ["-s", str(script)]
    out["text"] = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def parse(text: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = float(re.match(r"[\d.]+", value).group()), re.search(r"[a-z]+$", value).group()
        return number * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": ms(latency["50"]),
        "p99": ms(latency["99"]),
        "errors": float(sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5, help="alternating quiet/polled batch pairs")
    parser.add_argument("--rate", type=float, default=25.0, help="polls per second per client (0 = flood)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")

    from tests.integration.services import start_api, start_redis, start_worker

    workdir = Path(tempfile.mkdtemp(prefix="load-"))
    redis_service, url = start_redis(workdir)
    cache = Path(tempfile.gettempdir()) / "simsearch-bench-cache"
    worker = start_worker(url, workdir, "load", ready_timeout=600, SIMSEARCH_CACHE_DIR=str(cache))
    api, base = start_api(url, workdir, access_log=False, RATE_LIMIT_PER_SECOND="0", LOG_LEVEL="WARNING")
    try:
        service = Service(base)
        photos = [p.read_bytes() for p, _ in labelled_images(args.data)]
        assert len(photos) >= args.images + 32, "not enough photos"
        service.index("warmup", [(f"w{i}.jpg", b) for i, b in enumerate(photos[-32:])])
        files = [(f"i{i}.jpg", b) for i, b in enumerate(photos[: args.images])]
        quiet_times, busy_times, polls = [], [], []
        # Quiet and polled batches alternate, so drift on the machine hits both alike.
        for run in range(args.repeat):
            quiet_times.append(timed_batch(service, f"quiet{run}", files))
            result: dict = {}
            pollers: list[threading.Thread] = []

            def start_polling(job_id: str, result: dict = result, pollers: list = pollers) -> None:
                seconds = max(2, int(min(quiet_times) * 0.9))  # poll for (about) the whole batch
                thread = threading.Thread(
                    target=wrk,
                    args=(f"{base}/v1/jobs/{job_id}", seconds, args.clients, args.rate, result),
                    daemon=True,
                )
                thread.start()
                pollers.append(thread)

            busy_times.append(timed_batch(service, f"polled{run}", files, on_submit=start_polling))
            pollers[0].join()
            polls.append(parse(result["text"]))
            print(
                f"run {run + 1}: quiet {quiet_times[-1]:.2f}s, polled {busy_times[-1]:.2f}s "
                f"({100 * (busy_times[-1] / quiet_times[-1] - 1):+.1f} %), {polls[-1]['rps']:.0f} polls/s, "
                f"p99 {polls[-1]['p99']:.1f} ms",
                flush=True,
            )
        quiet, busy = statistics.median(quiet_times), statistics.median(busy_times)
        print(f"median batch of {args.images}: {quiet:.2f}s quiet, {busy:.2f}s with {args.clients} clients polling")
        print(
            f"polls: {statistics.median(p['rps'] for p in polls):.0f}/s, latency p50 "
            f"{statistics.median(p['p50'] for p in polls):.1f} ms, p99 {max(p['p99'] for p in polls):.1f} ms "
            f"(worst run), non-2xx {sum(p['errors'] for p in polls):.0f}"
        )
        print(f"batch slowed by {100 * (busy / quiet - 1):.1f} % (medians)")
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
