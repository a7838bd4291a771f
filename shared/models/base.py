"""The contract every embedding backbone fulfils, independent of how it is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Embedder(Protocol):
    """Turns a batch of RGB images into L2-normalised feature vectors."""

    name: str
    dim: int
    input_size: int

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 array (N, input_size, input_size, 3) RGB -> float32 (N, dim), rows of unit norm."""
        ...


@dataclass(frozen=True)
class Network:
    """A model's inference graph as Keras builds it: preprocessed float32 NHWC in, pooled features
    out. A runner (TensorFlow, OpenVINO, ...) executes it; the model is defined in one place."""

    name: str
    dim: int
    input_size: int
    model: Any  # keras.Model
    preprocess: Callable[[np.ndarray], np.ndarray]
    weights_id: str  # identifies the weights, so compiled-model caches know when they are stale


class Runner(Protocol):
    backend: str
    precision: str

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed float32 (N, H, W, 3) -> raw pooled features (N, dim)."""
        ...


class TensorFlowRunner:
    """The reference runner: Keras float32 through one traced `tf.function` (no per-call retracing)."""

    backend = "tensorflow"
    precision = "f32"

    def __init__(self, network: Network) -> None:
        import tensorflow as tf

        side = network.input_size
        self._forward = tf.function(
            lambda x: network.model(x, training=False),
            input_signature=[tf.TensorSpec([None, side, side, 3], tf.float32)],
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(batch).numpy()


class NetworkEmbedder:
    """An `Embedder` made of a network (what to compute) and a runner (how to compute it)."""

    def __init__(self, network: Network, runner: Runner) -> None:
        self.network = network
        self.runner = runner
        self.name = network.name
        self.dim = network.dim
        self.input_size = network.input_size

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        expected = (self.input_size, self.input_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"expected uint8 images of shape (N, *{expected}), got {images.shape}")
        if images.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(self.runner(self.network.preprocess(images)))


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry. Building imports TensorFlow, so only workers call `build`; the worker
    then picks the runner (inference backend) for the network."""

    name: str
    dim: int
    default_input_size: int
    weight_sources: str  # human-readable: which EMBEDDING_WEIGHTS values are accepted
    build: Callable[[str, int, Path], Network]  # (weights, input_size, cache_dir) -> Network
    # Checks (and fetches, where it can) the weights without importing TensorFlow, so a worker
    # with missing weights fails at start with a clear message instead of on its first task.
    prepare: Callable[[str, Path], None] = lambda weights, cache_dir: None
    # The similarity below which a match is "not similar" in a collection too small to calibrate
    # on (worker/search/calibration.py), measured on the model's ImageNet weights; None: not measured.
    no_match_floor: float | None = None
    # The default NO_MATCH_PERCENTILE for this model's vectors (bench/no_match.py): the share (%)
    # of a collection's own images whose nearest neighbour falls below its calibrated threshold.
    no_match_percentile: float = 1.0


def l2_normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    # An all-zero vector (possible with random weights) stays zero instead of becoming NaN.
    return features / np.maximum(norms, 1e-12)
