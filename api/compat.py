"""Which collections this deployment can serve: those built with the model its workers run."""

from __future__ import annotations

from api.settings import ApiSettings
from shared.errors import Conflict
from shared.schemas import CollectionInfo


def require_current_model(info: CollectionInfo | None, settings: ApiSettings) -> None:
    # An empty collection takes whatever model fills it first, so only a non-empty one can clash.
    if info is None or not info.image_count or info.model in (None, settings.embedding_model):
        return
    raise Conflict(
        f"collection {info.name!r} holds {info.model} vectors ({info.dimension}-d) but this service embeds "
        f"with {settings.embedding_model}; re-embed it first (POST /v1/collections/{info.name}/reembed), "
        f"or run the API and workers with EMBEDDING_MODEL={info.model} (and the INPUT_SIZE it was built at)",
        code="model_mismatch",
    )
