"""The contract every embedding backbone fulfils, independent of how it is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
class ModelSpec:
    """A registry entry. Building imports TensorFlow, so only workers call `build`."""

    name: str
    dim: int
    default_input_size: int
    weight_sources: str  # human-readable: which EMBEDDING_WEIGHTS values are accepted
    build: Callable[[str, int, Path], Embedder]  # (weights, input_size, cache_dir) -> Embedder
    # Checks (and fetches, where it can) the weights without importing TensorFlow, so a worker
    # with missing weights fails at start with a clear message instead of on its first task.
    prepare: Callable[[str, Path], None] = lambda weights, cache_dir: None


def l2_normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    # An all-zero vector (possible with random weights) stays zero instead of becoming NaN.
    return features / np.maximum(norms, 1e-12)
