"""The client's address: X-Forwarded-For is believed only from trusted proxies."""

from __future__ import annotations

from server.security.client_ip import client_ip, trusted_networks


def scope(peer: str, forwarded: str | None = None) -> dict:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return {"client": (peer, 1234), "headers": headers}


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    proxies = trusted_networks(["10.0.0.0/8"])
    assert client_ip(scope("198.51.100.7", "1.2.3.4"), proxies) == "198.51.100.7"
    assert client_ip(scope("198.51.100.7", "1.2.3.4"), []) == "198.51.100.7"


def test_forwarded_for_is_walked_from_the_right_past_trusted_proxies() -> None:
    proxies = trusted_networks(["10.0.0.0/8"])
    # The client wrote "6.6.6.6" itself; only the hops our proxies appended are believed.
    assert client_ip(scope("10.0.0.2", "6.6.6.6, 203.0.113.5, 10.0.0.9"), proxies) == "203.0.113.5"
    assert client_ip(scope("10.0.0.2", "10.0.0.3"), proxies) == "10.0.0.3"
    assert client_ip(scope("10.0.0.2", "not-an-ip"), proxies) == "10.0.0.2"
    assert client_ip(scope("10.0.0.2"), proxies) == "10.0.0.2"
