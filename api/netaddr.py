"""The client address that rate limits count against.

uvicorn's own `--proxy-headers` trusts `X-Forwarded-For` from any peer in `FORWARDED_ALLOW_IPS`
(127.0.0.1 by default), so behind nothing at all a client could name a fresh address on every
request. Instead uvicorn runs with `--no-proxy-headers` and the address is derived here: the socket
peer, unless that peer is one of `TRUSTED_PROXIES`; then the right-most `X-Forwarded-For` entry
that is not itself a trusted proxy (entries further left were written by the client and prove
nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


def parse_networks(values: Iterable[str]) -> list[Network]:
    """IPs or CIDRs; a bare IP is a one-address network. Raises ValueError on anything else."""
    return [ip_network(value.strip(), strict=False) for value in values]


def parse_ip(text: str) -> Address | None:
    """An address as proxies write it: bare, `1.2.3.4:port`, `[v6]` or `[v6]:port`."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has at least two colons
        text = text.split(":", 1)[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d: count them as the IPv4 address.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def budget_subject(address: Address) -> str:
    """What rate limits count against: the address, or for IPv6 its /64 (one client usually holds
    a whole /64, so per-address budgets would be unlimited; the zone id goes with it)."""
    if isinstance(address, IPv6Address):
        return str(IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def client_address(peer: str | None, forwarded: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's rate-limit subject (see `budget_subject`). `forwarded` holds every
    X-Forwarded-For header line, in the order received."""
    if not peer:
        return "unknown"
    peer_ip = parse_ip(peer)
    if peer_ip is None or not trusted or not _trusted(peer_ip, trusted):
        return budget_subject(peer_ip) if peer_ip is not None else peer
    hops = [hop for line in forwarded for hop in line.split(",") if hop.strip()]
    address: Address = peer_ip
    for hop in reversed(hops):
        hop_ip = parse_ip(hop)
        if hop_ip is None:
            # Unparseable where a trusted proxy should have written its peer: keep the last
            # address we can vouch for rather than a string the client may have chosen.
            break
        address = hop_ip
        if not _trusted(hop_ip, trusted):
            break
    return budget_subject(address)
