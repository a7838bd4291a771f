"""What every job-creating route checks of a client-named URL: the shape only. Whether the host is
public is decided by the worker at connect time (shared/fetch.py), where DNS is actually resolved."""

from __future__ import annotations

from api.settings import ApiSettings
from shared.errors import InvalidRequest
from shared.urlcheck import FetchError, check_url

MAX_URL_LENGTH = 2048


def valid_url(url: str, what: str = "url") -> str:
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"{what} is over {MAX_URL_LENGTH} characters", code="invalid_url")
    try:
        check_url(url)
    except FetchError as exc:
        raise InvalidRequest(f"{what}: {exc.detail}", code="invalid_url") from exc
    return url


def callback_params(callback_url: str | None, settings: ApiSettings) -> dict[str, str]:
    """The job params for a completion callback (none without a URL)."""
    if not callback_url:
        return {}
    if settings.webhook_secret is None:
        raise InvalidRequest("this deployment has no WEBHOOK_SECRET: callbacks are off", code="webhooks_disabled")
    return {"callback_url": valid_url(callback_url, "callback_url")}
