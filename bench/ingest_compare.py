"""Ingest end to end, this tree against a baseline commit, in one run: bench/throughput.py (d).

    python bench/ingest_compare.py --baseline b61afb3 --rounds 3 --images 256

Checks the baseline out into a temporary git worktree and runs each tree's own
`bench/throughput.py --child service` (HTTP upload of the same real photos -> index job
`succeeded`, one worker, a fresh redis-server) alternately, `--rounds` times each, so that both
see the same machine state. Prints every run, the medians and current / baseline. This tree runs
with the production blob-store default (BLOB_FSYNC=true) unless --no-fsync.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tree(tree: Path, args: argparse.Namespace, fsync: bool) -> float:
    cmd = [sys.executable, str(tree / "bench" / "throughput.py"), "--child", "service", "--model", args.model]
    cmd += ["--data", str(args.data), "--images", str(args.images), "--cache-dir", str(args.cache_dir)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore", BLOB_FSYNC=str(fsync).lower())
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{tree} failed:\n{out.stderr[-3000:]}")
    return float(json.loads(lines[-1])["images_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="b61afb3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "simsearch-bench-cache")
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="baseline-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline], check=True)
    runs: dict[str, list[float]] = {"baseline": [], "current": []}
    try:
        for r in range(args.rounds):
            for name, tree in (("baseline", base), ("current", ROOT)):
                images_s = run_tree(tree, args, fsync=not args.no_fsync)
                runs[name].append(images_s)
                print(f"round {r + 1} {name:8s} {images_s:6.1f} images/s", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    figures = {
        "model": args.model,
        "images": args.images,
        "baseline": args.baseline,
        "baseline_images_s": round(medians["baseline"], 1),
        "current_images_s": round(medians["current"], 1),
        "ratio": round(medians["current"] / medians["baseline"], 3),
        "fsync": not args.no_fsync,
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
