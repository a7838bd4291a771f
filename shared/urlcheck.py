"""Client-named URLs: the errors of fetching one, and the checks that need no network (the API
uses these; the connect-time address check lives in shared/fetch.py)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from shared.errors import SimsearchError


class FetchError(SimsearchError):
    """A URL that could not be fetched; `code` is the item's error."""

    def __init__(self, detail: str, code: str = "fetch_failed") -> None:
        super().__init__(detail, code=code, status_code=422)


class BlockedAddress(FetchError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail, code="blocked_address")


# IPv6 ranges that carry an IPv4 address a gateway may translate to (NAT64, 6to4, SIIT, the
# deprecated IPv4-compatible form): Python calls some of them global, so they are refused outright.
TRANSLATED = [
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::ffff:0:0:0/96", "::/96")
]
# Site-local IPv6 (deprecated by RFC 3879, still routed inside some networks as private space):
# Python calls it global.
SITE_LOCAL = ipaddress.ip_network("fec0::/10")


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
        elif any(ip in net for net in TRANSLATED) or ip in SITE_LOCAL:
            return False
    # is_global excludes private, loopback, link-local (cloud metadata), reserved, shared (CGNAT)
    # and documentation ranges; multicast is "global" for some ranges, so it is refused by name.
    return ip.is_global and not ip.is_multicast


def check_url(url: str) -> None:
    """The shape rules, before any lookup: http(s), a host, no credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"only http and https URLs can be fetched, not {parts.scheme or 'none'!r}", code="invalid_url")
    if not parts.hostname:
        raise FetchError("the URL has no host", code="invalid_url")
    if parts.username or parts.password:
        raise FetchError("URLs with credentials are refused", code="invalid_url")
