"""One error hierarchy for the whole service.

The API turns any `SimsearchError` into an HTTP response `{"error": code, "detail": text}`; the
worker records the same code and detail against the failed item or job.
"""

from __future__ import annotations

from typing import Any


class SimsearchError(Exception):
    status_code: int = 500
    code: str = "internal_error"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, *, code: str | None = None, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


class ValidationFailed(SimsearchError):
    """A request that does not fit its schema: `detail` is one line naming each field, `fields`
    the same as a list of {loc, msg, type} for programs."""

    status_code = 422
    code = "validation_error"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.fields = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        super().__init__("; ".join(_line(f) for f in self.fields) or "the request is not valid")


def _line(field: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in field["loc"])
    return f"{loc}: {field['msg']}" if loc else str(field["msg"])


class InvalidRequest(SimsearchError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(SimsearchError):
    status_code = 401
    code = "unauthorized"


class Forbidden(SimsearchError):
    status_code = 403
    code = "forbidden"


class NotFound(SimsearchError):
    status_code = 404
    code = "not_found"


class Conflict(SimsearchError):
    status_code = 409
    code = "conflict"


class RateLimited(SimsearchError):
    status_code = 429
    code = "rate_limited"
    headers = {"Retry-After": "1"}  # noqa: RUF012 - rate windows are one second long


class PayloadTooLarge(SimsearchError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMedia(SimsearchError):
    status_code = 415
    code = "unsupported_media_type"


class ServiceUnavailable(SimsearchError):
    status_code = 503
    code = "service_unavailable"


class InvalidImage(SimsearchError):
    """An upload that is not a decodable image of an allowed format (fails one item, not the batch)."""

    status_code = 400
    code = "invalid_image"


class ModelWeightsUnavailable(SimsearchError):
    status_code = 503
    code = "model_weights_unavailable"
