"""One error hierarchy for the whole service.

The API turns any `SimsearchError` into an HTTP response `{"error": code, "detail": text}`; the
worker records the same code and detail against the failed item or job.
"""

from __future__ import annotations


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


class InvalidRequest(SimsearchError):
    status_code = 400
    code = "invalid_request"


class NotFound(SimsearchError):
    status_code = 404
    code = "not_found"


class Conflict(SimsearchError):
    status_code = 409
    code = "conflict"


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
