"""How spread out real embeddings are, and a generator of synthetic vectors that are spread alike.

Embeds the labelled animals photos with the worker's own model code (EfficientNet-Lite0, ImageNet
weights, TensorFlow float32, in this process; ~80 s on 2 cores, cached to a .npy under /tmp), then
prints the same statistics for the real vectors and for `synthetic` vectors of the same shape
(3,000 vectors in 3 clusters):

- cosine similarity of each vector to the global mean direction;
- cosine similarity of random pairs, within a class and across classes (medians);
- cosine similarity of each vector to its class centroid (5th, 50th, 95th percentiles);
- nearest-neighbour similarity, excluding itself: the 1st and the 10th (medians);
- PCA: the participation ratio (sum λ)^2 / sum λ^2 of all vectors and of the class-centred ones
  (the effective dimensionality), and how many components hold 50/80/90 % of the within-class
  variance.

    python bench/spread.py                 # real vs synthetic with the fitted defaults
    python bench/spread.py --fit           # re-fit the generator's parameters (Nelder-Mead, ~10 min)

The generator (`synthetic`) is a two-level Gaussian mixture in a random orthonormal basis, offset
along one "global mean" direction (real features are non-negative, so every pair has a positive
cosine), and L2-normalised:

    x = normalise(m * g + R (c_k + t_kj + s_k * e)),   e ~ N(0, diag(λ)),  λ_i ∝ (i + i0)^-α

c_k is the cluster centre (~N(0, b² λ)), t_kj one of `subclusters` sub-centres in it (breeds in a
class; ~N(0, (u s_k)² λ)), s_k = spread * exp(h z) each cluster's own spread. The parameters below
were fitted (--fit) so that the statistics above match the real ones; by default a collection of n
vectors has n / 1000 clusters, the size of one animals class.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import astuple, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE = Path("/tmp/simsearch-spread")
ANIMALS = ROOT.parent / "shared" / "datasets" / "animals"
CHUNK = 65_536  # rows per generated chunk: each chunk has its own seed, so outputs are prefix-stable


@dataclass(frozen=True)
class Shape:
    """The generator's parameters (see the module docstring); defaults fitted to EfficientNet-Lite0."""

    spread: float = 0.9  # s: within-cluster noise scale
    mean: float = 0.906  # m: offset along the global mean direction
    between: float = 0.768  # b: scale of cluster centres around it
    alpha: float = 0.916  # α: spectrum decay
    i0: float = 1.858  # i0: flattens the top of the spectrum
    sub: float = 0.521  # u: sub-cluster centres' scale, relative to the cluster's spread
    # h: log-normal spread of s_k across clusters. Three classes cannot fit it (a free fit ran to
    # 0.98 on one seed's draw); 0.35 matches the real p5/p95 of cos-to-centroid averaged over seeds.
    hetero: float = 0.35


def _spectrum(dim: int, shape: Shape) -> np.ndarray:
    lam = (np.arange(1, dim + 1) + shape.i0) ** -shape.alpha
    return np.sqrt(lam / lam.sum()).astype(np.float32)


def synthetic_chunks(
    n: int,
    dim: int,
    seed: int = 0,
    clusters: int | None = None,
    spread: float | None = None,
    *,
    subclusters: int = 10,
    shape: Shape = Shape(),
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`synthetic`'s rows as (vectors, labels) chunks of CHUNK rows: memory stays at one chunk.

    Each chunk has its own seed, so the first m rows are the same whatever n is."""
    clusters = clusters or max(1, n // 1000)
    if spread is not None:
        shape = replace(shape, spread=spread)
    rng = np.random.default_rng([seed, 0])
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    direction = rng.standard_normal(dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    sq = _spectrum(dim, shape)
    own = (shape.spread * np.exp(shape.hetero * rng.standard_normal(clusters))).astype(np.float32)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * sq * shape.between
    subs = centres[:, None, :] + rng.standard_normal((clusters, subclusters, dim), dtype=np.float32) * (
        sq * shape.sub * own[:, None, None]
    )
    subs = subs.reshape(clusters * subclusters, dim)
    for c, start in enumerate(range(0, n, CHUNK)):
        rows = min(n, start + CHUNK) - start
        crng = np.random.default_rng([seed, 1, c])
        lab = crng.integers(0, clusters, rows)
        sub = lab * subclusters + crng.integers(0, subclusters, rows)
        z = subs[sub] + crng.standard_normal((rows, dim), dtype=np.float32) * sq * own[lab, None]
        x = z @ basis.T  # the spectrum's axes are random directions, not the coordinate axes
        x += shape.mean * direction
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x, lab


def synthetic(
    n: int,
    dim: int,
    seed: int = 0,
    clusters: int | None = None,
    spread: float | None = None,
    *,
    subclusters: int = 10,
    shape: Shape = Shape(),
    return_labels: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """n float32 unit vectors of `dim` dimensions (rows), and their cluster labels if asked.

    `clusters` defaults to n / 1000 (one animals class each); `spread` scales the within-cluster
    noise (the fitted default reproduces the real statistics; larger is harder for an index)."""
    out = np.empty((n, dim), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    at = 0
    for x, lab in synthetic_chunks(n, dim, seed, clusters, spread, subclusters=subclusters, shape=shape):
        out[at : at + len(x)], labels[at : at + len(x)] = x, lab
        at += len(x)
    return (out, labels) if return_labels else out


# -- statistics ------------------------------------------------------------------------------------
STATS = [
    "cos to global mean (median)",
    "pair cos within class (median)",
    "pair cos across classes (median)",
    "cos to class centroid p5",
    "cos to class centroid p50",
    "cos to class centroid p95",
    "NN-1 similarity (median)",
    "NN-10 similarity (median)",
    "participation ratio, all",
    "participation ratio, class-centred",
    "components for 50 % (class-centred)",
    "components for 80 % (class-centred)",
    "components for 90 % (class-centred)",
]


def _pca(y: np.ndarray) -> tuple[float, list[int]]:
    y = y - y.mean(0)
    ev = np.maximum(np.linalg.eigvalsh((y.T @ y).astype(np.float64))[::-1], 0)
    ev /= ev.sum()
    cum = np.cumsum(ev)
    return float(1 / np.sum(ev**2)), [int(np.searchsorted(cum, t) + 1) for t in (0.5, 0.8, 0.9)]


def statistics(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The STATS of unit vectors `x` with class `labels` (all pairs: keep n to a few thousand)."""
    _, labels = np.unique(labels, return_inverse=True)
    g = x.mean(0)
    sims = x @ x.T
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same), 1)
    to_centroid, centred = [], []
    for lab in np.unique(labels):
        rows = x[labels == lab]
        c = rows.mean(0)
        to_centroid.append(rows @ (c / np.linalg.norm(c)))
        centred.append(rows - c)
    np.fill_diagonal(sims, -2)
    top = -np.sort(np.partition(-sims, 10, axis=1)[:, :10], axis=1)
    pr_all, _ = _pca(x)
    pr_within, parts = _pca(np.concatenate(centred))
    return np.array(
        [
            np.median(x @ (g / np.linalg.norm(g))),
            np.median(sims[upper & same]),
            np.median(sims[upper & ~same]),
            *np.percentile(np.concatenate(to_centroid), [5, 50, 95]),
            np.median(top[:, 0]),
            np.median(top[:, 9]),
            pr_all,
            pr_within,
            *parts,
        ]
    )


def _comparable(s: np.ndarray) -> np.ndarray:
    # Dimensionalities compare on a log scale; similarities as they are.
    return np.concatenate([s[:8], np.log(s[8:])])


WEIGHTS = np.array([1, 1, 1, 1, 1, 1, 2, 2, 0.3, 0.3, 0.2, 0.2, 0.2])


def fit(real: np.ndarray, labels: np.ndarray, start: Shape, evaluations: int = 150, seeds: int = 3) -> Shape:
    """Nelder-Mead over the generator's parameters (hetero held: three classes cannot estimate it).

    The loss compares the real statistics with their mean over a few seeds: fitted on one seed,
    the parameters matched that seed's draw of three clusters and ran ~0.05 low on others."""
    from scipy.optimize import minimize

    n, dim, k = len(real), real.shape[1], len(np.unique(labels))
    target = _comparable(statistics(real, labels))

    def loss(p: np.ndarray) -> float:
        if np.any(p <= 0):
            return 10.0
        shape = Shape(*p, hetero=start.hetero)
        got = [statistics(*synthetic(n, dim, seed, k, shape=shape, return_labels=True)) for seed in range(seeds)]
        return float(np.sum(WEIGHTS * (_comparable(np.mean(got, axis=0)) - target) ** 2))

    result = minimize(loss, np.array(astuple(start)[:-1]), method="Nelder-Mead", options={"maxfev": evaluations})
    print(f"fit: loss {result.fun:.5f} after {result.nfev} evaluations", flush=True)
    return Shape(*(round(float(v), 3) for v in result.x), hetero=start.hetero)


# -- the real vectors ------------------------------------------------------------------------------
def embed_animals(data: Path, model: str, weights: str, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 (n, dim), labels) of every image in `data`/labels.csv, cached under /tmp."""
    CACHE.mkdir(parents=True, exist_ok=True)
    vec_path, lab_path = CACHE / f"{data.name}-{model}-{weights}.npy", CACHE / f"{data.name}-{model}-labels.npy"
    if vec_path.is_file() and lab_path.is_file():
        return np.load(vec_path), np.load(lab_path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT / "bench"))
    from common import labelled_images
    from quality import _embed_files

    from shared.models.base import NetworkEmbedder, TensorFlowRunner
    from shared.models.registry import get_model_spec
    from worker.runtime import _configure_tensorflow

    _configure_tensorflow(threads)
    spec = get_model_spec(model)
    network = spec.build(weights, spec.default_input_size, Path.home() / ".cache" / "simsearch")
    embedder = NetworkEmbedder(network, TensorFlowRunner(network))
    items = labelled_images(data)
    t0 = time.perf_counter()
    vectors = _embed_files(embedder.embed, [p.read_bytes() for p, _ in items], embedder.input_size)
    print(f"embedded {len(items)} images in {time.perf_counter() - t0:.0f}s", flush=True)
    labels = np.array([lab for _, lab in items])
    np.save(vec_path, vectors.astype(np.float32))
    np.save(lab_path, labels)
    return vectors, labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ANIMALS)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fit", action="store_true", help="re-fit the generator's parameters first")
    args = parser.parse_args()
    real, labels = embed_animals(args.data, args.model, args.weights, args.threads)
    classes = np.unique(labels)
    print(f"{len(real)} real vectors ({real.shape[1]}-d, {args.model}), classes {', '.join(classes)}")
    shape = fit(real, labels, Shape()) if args.fit else Shape()
    print(f"generator: {shape}", flush=True)
    got_real = statistics(real, labels)
    # Three clusters are a small sample of the generator: show seed 0 and the mean over seeds 0-4.
    got_fake = []
    for seed in range(5):
        fake, fake_labels = synthetic(len(real), real.shape[1], seed, len(classes), shape=shape, return_labels=True)
        got_fake.append(statistics(fake, fake_labels))
    mean_fake = np.mean(got_fake, axis=0)
    print(f"{'statistic':38s} {'real':>8s} {'synth s0':>9s} {'synth mean':>10s}")
    for name, a, b, c in zip(STATS, got_real, got_fake[0], mean_fake, strict=True):
        print(f"{name:38s} {a:8.3f} {b:9.3f} {c:10.3f}")
    for lab in classes:
        rows = real[labels == lab]
        c = rows.mean(0)
        q = np.percentile(rows @ (c / np.linalg.norm(c)), [5, 50, 95])
        print(f"  real class {lab!s:8s} cos to centroid p5/p50/p95 {q[0]:.3f} {q[1]:.3f} {q[2]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
