"""The address of the client behind a request, seen through the proxies the operator trusts.

Under an Ingress or a load balancer every request comes from the proxy, so the rate limit, the
per-client server quota and ``ban_networks`` would all see one address. Proxies append the address
they received a request from to ``X-Forwarded-For``; only the entries added by proxies we trust
mean anything, since a client can write whatever it likes at the left of the header. So the
header is read only when the direct peer is a trusted proxy, and then from the right: every
trusted hop is skipped, and the first address that is not a trusted proxy is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.requests import Request

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(value: str) -> Address | None:
    """An address from a peer or a header entry (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``), or None.

    IPv4-mapped IPv6 addresses become IPv4, so ``::ffff:10.0.0.1`` matches ``10.0.0.0/8``.
    """
    value = value.strip()
    if value.startswith("["):  # [v6] or [v6]:port
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:  # v4:port (a bare v6 address has at least two colons)
        value = value.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_key(address: str) -> str:
    """The key a client is counted and recognised under: its address, or its /64 for IPv6.

    One IPv6 subscriber usually holds a whole /64 and can pick any address in it (privacy
    extensions even rotate them by themselves), so keying on single IPv6 addresses would let one
    client dodge the rate limit at will, and would refuse a browser its own resume after a
    rotation. The launcher's per-client quota counts the same way (kiln_launcher.quota.client_key).
    """
    addr = parse_address(address) if address else None
    if addr is None:
        return address.strip()
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class ClientAddresses:
    """Finds the client's address of a request, given the trusted proxies' networks (CIDRs)."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted: list[Network] = [ipaddress.ip_network(c.strip(), strict=False) for c in trusted_proxies]

    def trusted(self, addr: Address) -> bool:
        return any(addr.version == net.version and addr in net for net in self._trusted)

    def resolve(self, peer: str, forwarded_for: Sequence[str] = ()) -> str:
        """The client's address, from the direct peer and the ``X-Forwarded-For`` header values."""
        peer_addr = parse_address(peer) if peer else None
        if peer_addr is None or not self._trusted or not self.trusted(peer_addr):
            return str(peer_addr) if peer_addr is not None else peer  # a direct client: its header means nothing
        hops = [entry for value in forwarded_for for entry in value.split(",") if entry.strip()]
        client = peer_addr
        for entry in reversed(hops):
            addr = parse_address(entry)
            if addr is None:
                # A trusted proxy passed on something that is not an address: nothing left of it can
                # be believed, so the last hop that was believed stands for the client.
                break
            client = addr
            if not self.trusted(addr):
                break
        return str(client)

    def of(self, request: Request) -> str:
        """The client's address of ``request`` ("" when the server does not know its peer)."""
        peer = request.client.host if request.client else ""
        return self.resolve(peer, request.headers.getlist("x-forwarded-for"))
