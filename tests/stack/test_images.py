"""The services' container images: the shared runtime covers every dependency, and an image runs."""

from __future__ import annotations

import os
import re
import subprocess
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest

from .test_local_stack import free_port, script

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["gateway", "resolver", "builder", "launcher", "analytics"]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=! ]", r.strip(), maxsplit=1)[0].lower() for r in requirements if r.strip() and not r.startswith("#")}


def test_runtime_image_has_every_service_dependency() -> None:
    runtime = names((ROOT / "deploy" / "images" / "python" / "requirements.txt").read_text().splitlines())
    for project in [ROOT / "lib" / "kilnbus", *(ROOT / "services" / s for s in SERVICES)]:
        deps = names(tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]) - {"kilnbus"}
        assert deps <= runtime, f"{project.name} needs {deps - runtime}, missing from deploy/images/python/requirements.txt"


@pytest.mark.docker
@pytest.mark.kafka
@pytest.mark.slow
def test_gateway_image_builds_and_serves(bus_settings: object) -> None:
    built = script("images.sh", "gateway", timeout=900)
    assert built.returncode == 0, built.stdout + built.stderr
    port, name = free_port(), f"kilntest-gw-{uuid.uuid4().hex[:6]}"
    # The broker wants credentials: the tests' own (the admin's; a test prefix is under no service's ACLs).
    # ("-e NAME" passes the value from this environment, keeping the password off the command line.)
    kafka = [arg for key in os.environ if key.startswith("KILN_KAFKA_") for arg in ("-e", key)]
    subprocess.run(["docker", "run", "-d", "--rm", "--network", "host", "--name", name, "-e", f"KILN_GATEWAY_PORT={port}",
                    "-e", f"KILN_TOPIC_PREFIX=test-img-{uuid.uuid4().hex[:6]}.", *kafka, "127.0.0.1:5000/kiln/gateway:latest"],
                   check=True, capture_output=True, timeout=60)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/versions", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
                time.sleep(0.5)
        assert r.status_code == 200 and "binderhub" in r.json()
        user = subprocess.run(["docker", "exec", name, "id", "-un"], capture_output=True, text=True).stdout.strip()
        assert user == "kiln", "the service does not run as root"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
