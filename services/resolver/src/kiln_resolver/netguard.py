"""Refusing git URLs that point into private networks, so Kiln cannot be used to probe them."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from kiln_resolver.providers.base import ResolveError


async def check_public(host: str, allowed: list[str]) -> None:
    """Raise unless every address ``host`` resolves to is public, or the host is explicitly allowed."""
    if host in allowed:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ResolveError(f"The git host {host!r} does not resolve.", "provider_unreachable", 404) from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if str(addr) in allowed:
            continue
        if addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved or addr.is_multicast \
                or addr.is_unspecified:
            raise ResolveError(f"The git host {host!r} is on a private network ({addr}); this Binder does not launch from there.",
                               "private_host", 403)
