"""Peak memory of a worker chunk's decoding: large PNGs that compress well (a small request, a big decode).

Each way runs in a fresh process that prepares the images one after another and keeps every result
until the end, the way an index chunk does before its one forward pass:

  (a) old: `decode_image` per item, keeping the `DecodedImage` and the upload bytes; model input and
      rendition are made at the end (today's worker/ingest/indexing.py)
  (b) new: `prepare_image` per item, keeping only the `PreparedImage`

    python bench/decode_memory.py                       # 12 RGB PNGs of 7000x7000
    python bench/decode_memory.py --mode RGBA --count 4

The figure is the process's peak resident set (VmHWM; ru_maxrss where /proc is missing), which
includes the interpreter and its imports: the "baseline" line is that part alone.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

WAYS = ("old", "new")


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    # VmHWM belongs to this process image alone; ru_maxrss can carry the parent's peak across exec.
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_png(index: int, size: int, mode: str) -> bytes:
    """Flat shapes on a flat background: megapixels that compress to a few hundred KB."""
    import io

    from PIL import Image, ImageDraw

    rng = random.Random(index)

    def colour() -> tuple[int, ...]:
        return tuple(rng.randrange(256) for _ in mode)

    img = Image.new(mode, (size, size), colour())
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        box = [x0, y0, x0 + rng.randrange(size // 20, size // 2), y0 + rng.randrange(size // 20, size // 2)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour())
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def generate(folder: Path, count: int, size: int, mode: str) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"image_{i:02d}.png"
        path.write_bytes(make_png(i, size, mode))
        paths.append(path)
    return paths


def run_old(paths: list[Path], side: int) -> int:
    from shared.imaging import decode_image, rendition, to_model_input

    kept = []
    for path in paths:
        data = path.read_bytes()
        kept.append((decode_image(data), data))
    outputs = [(to_model_input(decoded.image, side), rendition(data, decoded)) for decoded, data in kept]
    return sum(pixels.nbytes + len(thumb) for pixels, thumb in outputs)


def run_new(paths: list[Path], side: int) -> int:
    from shared.imaging import prepare_image

    kept = [prepare_image(path.read_bytes(), side) for path in paths]
    return sum(p.pixels.nbytes + len(p.rendition) for p in kept)


def child(way: str, paths: list[Path], side: int) -> dict:
    import numpy  # noqa: F401  (the imports are part of the baseline, not of the measurement)
    import PIL.Image  # noqa: F401

    import shared.imaging  # noqa: F401

    baseline = _status_mb("VmRSS") or peak_rss_mb()
    started = time.perf_counter()
    kept_bytes = (run_old if way == "old" else run_new)(paths, side)
    return {
        "way": way,
        "peak_mb": round(peak_rss_mb(), 1),
        "baseline_mb": round(baseline, 1),
        "kept_mb": round(kept_bytes / 2**20, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }


def in_subprocess(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=12, help="images in the chunk (default 12)")
    parser.add_argument("--size", type=int, default=7000, help="side of each square PNG (default 7000)")
    parser.add_argument("--mode", choices=("RGB", "RGBA"), default="RGB", help="PNG colour mode (default RGB)")
    parser.add_argument("--side", type=int, default=224, help="model input side (default 224)")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.paths, args.side)))
        return
    with tempfile.TemporaryDirectory(prefix="decode-memory-") as tmp:
        paths = generate(Path(tmp), args.count, args.size, args.mode)
        request_mb = sum(p.stat().st_size for p in paths) / 2**20
        print(f"{args.count} {args.mode} PNGs of {args.size}x{args.size}: {request_mb:.1f} MB on the wire")
        results = {}
        for way in args.ways:
            r = in_subprocess(["--child", way, "--side", str(args.side), "--paths", *map(str, paths)])
            results[way] = r
            print(
                f"{way:>3}: peak RSS {r['peak_mb']:.0f} MB (baseline after imports {r['baseline_mb']:.0f} MB, "
                f"results kept {r['kept_mb']:.1f} MB, {r['seconds']:.1f} s)"
            )
    summary = {
        "images": args.count,
        "size": args.size,
        "mode": args.mode,
        "side": args.side,
        "request_mb": round(request_mb, 2),
        **{f"{way}_peak_mb": r["peak_mb"] for way, r in results.items()},
        **{f"{way}_baseline_mb": r["baseline_mb"] for way, r in results.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
