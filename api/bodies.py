"""Checks several routes share: a JSON body parsed into its model (422 naming each field), a
metadata filter (from a JSON body, a form field or a query parameter), and a collection that can
be searched with this k."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from api.compat import require_current_model
from api.metadata import load_json
from api.settings import ApiSettings
from api.store import ApiStore
from shared import filters
from shared.errors import InvalidRequest, NotFound, ValidationFailed
from shared.schemas import CollectionInfo

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ValidationFailed(list(exc.errors())) from exc


async def searchable(store: ApiStore, collection: str, settings: ApiSettings, k: int) -> CollectionInfo:
    """The collection's info, if it exists, runs the deployment's model, and k is allowed."""
    if k > settings.max_k:
        raise InvalidRequest(f"k is at most {settings.max_k}", code="k_too_large")
    info = await store.collection(collection)
    if info is None:
        raise NotFound(f"no collection {collection!r}", code="collection_not_found")
    require_current_model(info, settings)
    return info


def checked_filter(raw: Any) -> dict[str, Any] | None:
    """A JSON filter as sent, once it parses (InvalidFilter, a 422 naming the field, if not)."""
    if raw is None:
        return None
    try:
        json.dumps(raw, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # JSON text may escape a lone surrogate; no field can hold one
        raise filters.InvalidFilter("filter: holds text that is not valid Unicode (a lone surrogate)") from None
    filters.parse(raw)
    return raw


MAX_FILTER_TEXT = 64 * 1024


def text_filter(text: Any) -> dict[str, Any] | None:
    """A filter sent as JSON text: a form field next to an upload, or a query parameter."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise filters.InvalidFilter("filter: send the filter as a plain form field holding JSON, not a file")
    if len(text) > MAX_FILTER_TEXT:
        raise filters.InvalidFilter(f"filter: over {MAX_FILTER_TEXT} characters")
    raw = load_json(text, "filter:", filters.MAX_DEPTH, filters.InvalidFilter)
    return checked_filter(raw)


def form_filter(form: FormData) -> dict[str, Any] | None:
    sent = form.getlist("filter")
    if len(sent) > 1:
        raise filters.InvalidFilter("filter: send one 'filter' field (combine conditions with $and)")
    return text_filter(sent[0] if sent else None)
