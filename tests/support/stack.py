"""Addresses of the local stack's parts, as deploy/local/kiln.env computes them."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def user_gateway() -> str:
    """The host's address on the user network: where the hub's API listens (deploy/local/network.sh)."""
    if gateway := os.environ.get("KILN_USER_GATEWAY"):
        return gateway
    subnet = ipaddress.ip_network(os.environ.get("KILN_USER_SUBNET", "172.29.0.0/24"))
    return str(subnet.network_address + 1)


HUB_API = os.environ.get("KILN_HUB_API_URL") or f"http://{user_gateway()}:{os.environ.get('KILN_HUB_API_PORT', '8081')}/hub/api"


def use_local_registry_admin() -> None:
    """Tests push to and read the local registry as its admin (deploy/local/registry.sh), unless told
    of another registry: the docker CLI through DOCKER_CONFIG, Kiln's settings through KILN_REGISTRY_*."""
    password = ROOT / ".state" / "secrets" / "registry-admin"
    if os.environ.get("KILN_REGISTRY_URL") or not password.exists():
        return
    os.environ.setdefault("DOCKER_CONFIG", str(ROOT / ".state" / "docker" / "admin"))
    os.environ.setdefault("KILN_REGISTRY_USERNAME", "admin")
    os.environ.setdefault("KILN_REGISTRY_PASSWORD", password.read_text().strip())


def use_local_kafka_admin() -> None:
    """Tests talk to the local broker as its admin (a superuser), unless told of another cluster.

    BusSettings reads these from the environment, so every client a test makes authenticates.
    """
    password = ROOT / ".state" / "secrets" / "kafka-admin"
    if os.environ.get("KILN_KAFKA_BOOTSTRAP") or not password.exists():
        return
    os.environ.setdefault("KILN_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    os.environ.setdefault("KILN_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    os.environ.setdefault("KILN_KAFKA_SASL_USERNAME", "admin")
    os.environ.setdefault("KILN_KAFKA_SASL_PASSWORD", password.read_text().strip())
