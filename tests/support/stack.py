"""Addresses of the local stack's parts, as deploy/local/kiln.env computes them."""

from __future__ import annotations

import ipaddress
import os


def user_gateway() -> str:
    """The host's address on the user network: where the hub's API listens (deploy/local/network.sh)."""
    if gateway := os.environ.get("KILN_USER_GATEWAY"):
        return gateway
    subnet = ipaddress.ip_network(os.environ.get("KILN_USER_SUBNET", "172.29.0.0/24"))
    return str(subnet.network_address + 1)


HUB_API = os.environ.get("KILN_HUB_API_URL") or f"http://{user_gateway()}:{os.environ.get('KILN_HUB_API_PORT', '8081')}/hub/api"
