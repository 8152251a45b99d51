"""The client's address: the peer's, or X-Forwarded-For's when the peer is a configured trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from litestar.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(entries: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def client_ip(scope: Scope, trusted: Sequence[Network]) -> str:
    """Walk X-Forwarded-For from the right past trusted proxies; the first other address is the client.

    Only addresses appended by proxies we trust are believed: a client can write anything at the left.
    """
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    chain = [
        hop.strip()
        for name, value in scope.get("headers", [])
        if name == b"x-forwarded-for"
        for hop in value.decode("latin-1").split(",")
        if hop.strip()
    ]
    for hop in reversed(chain):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed chain is not evidence of anything
        if not _is_trusted(hop, trusted):
            return hop
    return chain[0] if chain else peer


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in trusted)
