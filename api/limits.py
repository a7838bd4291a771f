"""Refuse oversized request bodies before they are read whole (413), with a cap per kind of route."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import send_error
from api.paths import BATCH_ROUTE, IMPORT_ROUTE, LOOKUP_ROUTE, UPLOAD_ROUTES
from shared.errors import PayloadTooLarge


def route_path(scope: Scope) -> str:
    """The path the router matches: without a `--root-path` prefix (as Starlette strips it)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


def media_type(content_type: str | None) -> str:
    """`type/subtype` in lower case: media types are case-insensitive (RFC 9110 8.3.1)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def body_cap(method: str, path: str, content_type: str | None, caps: Mapping[str, int]) -> int:
    """How many body bytes this request may send. `caps`: "upload", "lookup", "import", "json".

    Only multipart bodies to the upload routes are streamed to disk; every other body the API
    reads is JSON, parsed whole into Python objects (~25x its size), so it gets a small cap.
    """
    multipart = media_type(content_type) == "multipart/form-data"
    if method == "POST" and multipart and any(route.match(path) for route in UPLOAD_ROUTES):
        return caps["upload"]
    if method == "POST" and (LOOKUP_ROUTE.match(path) or (BATCH_ROUTE.match(path) and not multipart)):
        return caps["lookup"]  # up to 10,000 image ids
    if method == "POST" and IMPORT_ROUTE.match(path):
        # A URL list as a file (text, CSV, multipart) is streamed to disk; as JSON it is parsed.
        return caps["import"] if media_type(content_type) == "application/json" else caps["upload"]
    return caps["json"]


class BodyTooLarge(PayloadTooLarge):
    """Raised inside the app while it reads the body, so the app's own handler answers 413."""


class BodySizeLimit:
    """Pure ASGI middleware: checks Content-Length up front and counts streamed (chunked) bytes."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        json_bytes: int | None = None,
        lookup_bytes: int | None = None,
        import_bytes: int | None = None,
    ):
        self.app = app
        self.caps = {
            "upload": max_bytes,
            "import": min(import_bytes or max_bytes, max_bytes),
            "json": min(json_bytes or max_bytes, max_bytes),
            "lookup": min(lookup_bytes or max_bytes, max_bytes),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        limit = body_cap(scope["method"], route_path(scope), content_type, self.caps)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        seen = 0
        exceeded = started = rejected = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise BodyTooLarge(f"request body exceeds {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, rejected
            if exceeded and not started:
                # The app may have turned the error into an answer of its own (FastAPI reports any
                # failure while reading a body parameter as 400): the answer is 413 regardless.
                if not rejected:
                    rejected = True
                    await self._reject(send, limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not started and not rejected:
                await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        await send_error(send, 413, "payload_too_large", f"request body exceeds {limit} bytes", close=True)
