"""Which URLs a fetch may reach. URLs come from a model, so a fetch must not become a way into the machine or
its network: only http(s), and only hosts whose every resolved address is public, checked after name
resolution and again on every redirect hop.

Refused unless `search.allow_private_hosts` is set: loopback, private ranges (RFC 1918, fc00::/7), link-local
(169.254/16, fe80::/10, where cloud metadata services live), multicast, reserved and unspecified addresses.
`search.allow_hosts` names `host:port` pairs that may be reached anyway (a local mirror). Known gap: the name is
resolved again by the HTTP client when it connects, so a DNS answer that changes between the check and the
connection (rebinding) is not caught.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from search_synth.web.errors import WebError

Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except socket.gaierror as exc:
        raise WebError(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None


def why_not_public(address: str) -> str:
    """Why this address is not a public one ("" when it is)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:
        return "non-global"
    return ""


def check_url(url: str, *, allow_private: bool = False, allow_hosts: tuple[str, ...] = (),
              resolve: Resolver = system_resolver) -> None:
    """Raise `WebError` unless `url` is an http(s) URL whose host resolves only to allowed addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebError(f"refused {url!r}: only http and https URLs can be fetched")
    host = parts.hostname
    if not host:
        raise WebError(f"refused {url!r}: no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebError(f"refused {url!r}: bad port") from None
    if allow_private or f"{host}:{port}" in allow_hosts:
        return
    for address in resolve(host, port):
        reason = why_not_public(address)
        if reason:
            raise WebError(f"refused {url!r}: {host} resolves to {address}, a {reason} address "
                           "(set search.allow_private_hosts to allow)")
