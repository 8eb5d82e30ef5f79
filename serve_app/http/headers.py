"""The one place that reads request headers from an ASGI scope (raw, lower-case
byte names as servers deliver them), and the client address derived from them."""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from starlette.types import Scope

Networks = tuple[IPv4Network | IPv6Network, ...]


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def header_list(scope: Scope, name: bytes) -> list[str]:
    """Every comma-separated element of every ``name`` header, in order (one
    header repeated means the same as its values joined by commas, RFC 9110 5.3)."""
    out: list[str] = []
    for key, value in scope["headers"]:
        if key == name:
            out.extend(part.strip() for part in value.decode("latin-1").split(","))
    return [part for part in out if part]


def peer_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def client_address(scope: Scope, trusted: Networks) -> str:
    """Who sent the request, for per-address limits.

    The connection's peer, unless the peer is a trusted proxy: then
    X-Forwarded-For is walked from the right (each proxy appends the address
    it saw) past trusted proxies, and the first address that is not one is
    the client. Entries further left were written by the client and are
    never believed. With no trusted proxies the header is not even read."""
    peer = peer_address(scope)
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = header_list(scope, b"x-forwarded-for")
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            # Not an address a proxy would write: what was right of it is
            # all we can trust, and it was all proxies.
            break
        if not _in(address, trusted):
            return str(address)
        peer = str(address)
    return peer


def _is_trusted(address: str, trusted: Networks) -> bool:
    parsed = _parse(address)
    return parsed is not None and _in(parsed, trusted)


def _in(address: IPv4Address | IPv6Address, trusted: Networks) -> bool:
    return any(address in net for net in trusted)


@lru_cache(maxsize=4096)
def _parse(text: str) -> IPv4Address | IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
