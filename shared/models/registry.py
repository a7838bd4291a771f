"""Model registry: name -> how to build it, its input size, dimension and weight sources.

Importing this module never imports TensorFlow (the API uses it to know dimensions); building a
model does, lazily, inside the worker process.
"""

from __future__ import annotations

from pathlib import Path

from shared.models.base import Embedder, ModelSpec


def _build_resnet50(weights: str, input_size: int, cache_dir: Path) -> Embedder:
    from shared.models import resnet50

    return resnet50.build(weights, input_size, cache_dir)


def _prepare_resnet50(weights: str, cache_dir: Path) -> None:
    from shared.models import resnet50

    resnet50.prepare(weights, cache_dir)


MODELS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec(
        name="resnet50",
        dim=2048,
        default_input_size=224,
        weight_sources="imagenet (Keras cache or download), a path to a Keras weights file, or random",
        build=_build_resnet50,
        prepare=_prepare_resnet50,
    ),
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown EMBEDDING_MODEL {name!r}; choose one of {sorted(MODELS)}") from None
