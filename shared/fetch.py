"""Fetching a client-named URL without becoming a proxy into the private network (SSRF).

The address check sits where the connection is made (an httpcore network backend): every
connection -- the first, each redirect's, a keep-alive reconnect -- resolves its host once,
refuses it unless every address is public, and connects to the address it checked (no second
lookup a DNS rebinding could answer differently). A refused host is never connected to.

The same backend holds every fetch and delivery to one deadline: each socket read and write waits
at most until then, so a server trickling its headers (or body) a byte at a time cannot stretch
a fetch past FETCH_TOTAL_TIMEOUT_S the way per-read timeouts alone would let it.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from shared.urlcheck import BlockedAddress, FetchError, check_url, is_public

MAX_REDIRECTS = 5
USER_AGENT = "simsearch-fetch/1"


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 32 * 1024 * 1024
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    total_timeout_s: float = 60.0  # the whole fetch, redirects and body included
    allow_private: bool = False  # tests serve images from loopback; never in production
    per_host: int = 4  # concurrent fetches from one host, per worker process


# When the fetch or delivery running in this thread must be over (time.monotonic()); None: no deadline.
_deadline: ContextVar[float | None] = ContextVar("fetch_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def _remaining(timeout: float | None, write: bool = False) -> float | None:
    """The socket timeout for one read or write: the phase's own, cut to the deadline."""
    end = _deadline.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise (httpcore.WriteTimeout if write else httpcore.ReadTimeout)("the fetch's total time is up")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the current fetch's deadline (read when the
    call is made: a pooled connection serves later fetches with their own deadlines)."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _remaining(timeout, write=True))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None):
        return DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, _remaining(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class GuardedBackend(httpcore.SyncBackend):
    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        blocked = [a for a in addresses if not is_public(a)]
        if blocked and not self.allow_private:
            # Every address must be public: a name with one public and one private address would
            # otherwise reach the private one on a retry.
            raise BlockedAddress(f"{host} resolves to a non-public address ({', '.join(blocked)})")
        return DeadlineStream(super().connect_tcp(addresses[0], port, timeout=_remaining(timeout), **kwargs))


class GuardedTransport(httpx.HTTPTransport):
    def __init__(self, allow_private: bool) -> None:
        super().__init__(trust_env=False)  # no proxy from the environment: it would skip the check
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=64,
            max_keepalive_connections=16,
            network_backend=GuardedBackend(allow_private),
        )


class HostLimits:
    """At most `per_host` fetches from one host at a time in this process."""

    def __init__(self, per_host: int) -> None:
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = defaultdict(lambda: threading.BoundedSemaphore(per_host))

    @contextmanager
    def hold(self, host: str) -> Iterator[None]:
        with self._lock:
            sem = self._sems[host]
        with sem:
            yield


class Fetcher:
    """One per worker process: a pooled, guarded HTTP client."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self.hosts = HostLimits(policy.per_host)
        timeout = httpx.Timeout(policy.read_timeout_s, connect=policy.connect_timeout_s)
        self.client = httpx.Client(
            transport=GuardedTransport(policy.allow_private),
            timeout=timeout,
            follow_redirects=False,  # each hop is checked here, then by the backend
            headers={"User-Agent": USER_AGENT},
        )

    def get(self, url: str) -> bytes:
        """The body of `url`, at most `max_bytes`; raises `FetchError` with the item's code."""
        ends = time.monotonic() + self.policy.total_timeout_s
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url)
            with self.hosts.hold(urlsplit(url).hostname or ""), deadline(ends - time.monotonic()):
                response = self._open(url, ends)
            if isinstance(response, str):
                url = response  # a redirect: checked again on the next turn
                continue
            return response
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    def _open(self, url: str, ends: float) -> bytes | str:
        """The body, or the next URL of a redirect."""
        with _as_fetch_errors(), self.client.stream("GET", url) as response:
            if response.is_redirect:
                location = response.headers.get("location")
                if not location:
                    raise FetchError(f"HTTP {response.status_code} without a Location")
                return str(response.url.join(location))
            if response.status_code != 200:
                raise FetchError(f"HTTP {response.status_code} from {response.url.host}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.policy.max_bytes:
                raise FetchError(f"{declared} bytes, over the limit of {self.policy.max_bytes}", "too_large")
            return self._read(response, ends)

    def _read(self, response: httpx.Response, ends: float) -> bytes:
        body = bytearray()
        for chunk in response.iter_bytes():  # as it arrives: a trickle meets the deadline too
            body += chunk
            if len(body) > self.policy.max_bytes:
                raise FetchError(f"over the limit of {self.policy.max_bytes} bytes", code="too_large")
            if time.monotonic() > ends:
                raise FetchError(f"not done within {self.policy.total_timeout_s}s", code="timeout")
        return bytes(body)

    def post_json(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST without following redirects (webhooks): the status code, or raises FetchError.
        The answer's body is never read (a receiver cannot make us hold or wait for one)."""
        check_url(url)
        headers = {"Content-Type": "application/json", **headers}
        with (
            _as_fetch_errors(),
            self.hosts.hold(urlsplit(url).hostname or ""),
            deadline(self.policy.total_timeout_s),
            self.client.stream("POST", url, content=body, headers=headers) as response,
        ):
            return response.status_code

    def close(self) -> None:
        self.client.close()


@contextmanager
def _as_fetch_errors() -> Iterator[None]:
    """httpx's exceptions as the item errors a job reports."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise FetchError(f"timed out: {type(exc).__name__}", code="timeout") from exc
    except httpx.HTTPError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, BlockedAddress):
            raise cause from None
        raise FetchError(f"{type(exc).__name__}: {exc}"[:300]) from exc
    except (FetchError, OSError):
        raise
    except (httpx.InvalidURL, ValueError, UnicodeError) as exc:  # e.g. a host name IDNA cannot encode
        raise FetchError(f"{type(exc).__name__}: {exc}"[:300], code="invalid_url") from exc


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook signature: HMAC-SHA256 over `timestamp.body`, hex."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
