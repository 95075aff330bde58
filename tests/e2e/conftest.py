"""The end-to-end suite runs Kiln's five services as containers from their images, started here with
testcontainers on the host network, against the stack's real Kafka, registry, engine and hub.

testcontainers' reaper (Ryuk) is turned off: its image would have to be pulled, and nothing can be
pulled here; the session fixture removes its containers itself. While the suite runs, the services
`make up` started are stopped, and they are started again afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer

from ..support.stack import HUB_API

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "local"
REGISTRY = os.environ.get("KILN_REGISTRY_HOST", "127.0.0.1:5000")
ORDER = ("resolver", "builder", "launcher", "analytics", "gateway")
# Settings of the suite's own, under any a test gives: the launcher's first wait before retrying the
# hub is 1 s, not 4, so a launch with the hub down fails after 7 s of retries instead of 28 (the rule
# is the same; the load test asks for the production default again).
# Warm pools are off (tests/e2e/test_pool.py turns one on): their servers would start beside the
# ones other tests count, on a machine of two cores.
# Analytics' group waits 6 s (the broker's least) rather than 15 s for a killed member before its
# restarted self takes the partitions back.
SUITE_ENV = {"launcher": {"KILN_RETRY_DELAY_S": "1", "KILN_POOL_SIZE": "0"},
             "analytics": {"KILN_ANALYTICS_SESSION_TIMEOUT_S": "6"}}


def script(name: str, *args: str) -> str:
    done = subprocess.run(["bash", str(LOCAL / name), *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{name} {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


class KilnServices:
    """The five services as testcontainers, each startable, killable and restartable on its own."""

    def __init__(self) -> None:
        self.containers: dict[str, DockerContainer] = {}

    def start(self, service: str, extra_env: dict[str, str] | None = None, timeout: float = 90) -> None:
        env_file = script("services.sh", "env", service).strip().splitlines()[-1]
        env = dict(line.split("=", 1) for line in Path(env_file).read_text().splitlines() if "=" in line)
        env.update(SUITE_ENV.get(service, {}))
        env.update(extra_env or {})
        container = DockerContainer(f"{REGISTRY}/kiln/{service}:latest", env=env, name=f"kiln-{service}")
        container.with_kwargs(network_mode="host", labels={"org.kiln.stack": "e2e"})
        if service == "builder":
            (ROOT / ".state" / "builder").mkdir(parents=True, exist_ok=True)
            container.with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
            container.with_volume_mapping(str(ROOT / ".state" / "builder"), "/var/lib/kiln-builder", "rw")
        container.start()
        self.containers[service] = container
        self._wait_ready(service, container, timeout)

    def _wait_ready(self, service: str, container: DockerContainer, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if service == "gateway":
                try:
                    if httpx.get("http://127.0.0.1:8585/health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            else:
                out, err = container.get_logs()
                if f"kiln-{service}: consuming".encode() in out + err:
                    return
            container.get_wrapped_container().reload()
            assert container.get_wrapped_container().status == "running", container.get_logs()[1][-2000:]
            time.sleep(0.3)
        raise AssertionError(f"the {service} container did not become ready: {container.get_logs()[1][-2000:]!r}")

    def kill9(self, service: str) -> None:
        """SIGKILL, as a crash: the service gets no chance to finish or commit anything."""
        container = self.containers.pop(service)
        wrapped = container.get_wrapped_container()
        wrapped.kill(signal="SIGKILL")
        wrapped.wait(timeout=30)
        container.stop()

    def restart(self, service: str, extra_env: dict[str, str] | None = None) -> None:
        """Start ``service`` again (gracefully stopped first if it runs), with settings of the test's if given."""
        if service in self.containers:
            self.stop(service)
        self.start(service, extra_env)

    def restart_many(self, services: dict[str, dict[str, str] | None]) -> None:
        """``restart`` several services at once: each waits mostly on its own start, not on the others'."""
        with ThreadPoolExecutor(max_workers=len(services)) as pool:
            list(pool.map(lambda item: self.restart(*item), services.items()))

    def stop_all(self) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(self.containers))) as pool:
            list(pool.map(self.stop, list(self.containers)))

    def stop(self, service: str) -> None:
        container = self.containers.pop(service)
        container.get_wrapped_container().stop(timeout=40)  # SIGTERM: finish, commit, leave the group
        container.stop()


@pytest.fixture(scope="session")
def kiln_services() -> Iterator[KilnServices]:
    script("images.sh")  # the images the chart uses too, rebuilt only if their sources changed
    script("services.sh", "stop")
    services = KilnServices()
    try:
        # The four consumers start side by side; the gateway last, as make up starts it.
        services.restart_many({service: None for service in ORDER if service != "gateway"})
        services.start("gateway")
        yield services
    finally:
        services.stop_all()
        # The stack's own services again, as make up left them, without holding the suite's end
        # for their start (its output goes to their logs, as make up's does).
        subprocess.Popen(["bash", str(LOCAL / "services.sh"), "start"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(autouse=True)
def _services_running(kiln_services: KilnServices) -> None:
    """Every end-to-end test runs against the containers above."""


@pytest.fixture(scope="module")
def repos() -> Iterator[Path]:
    """A folder of repositories under the stack's git server, removed afterwards with their servers."""
    root = ROOT / ".state" / "git-repos" / f"e2e{uuid.uuid4().hex[:6]}"
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)
    token = (ROOT / ".state" / "hub" / "launcher-token").read_text().strip()
    with httpx.Client(base_url=HUB_API, headers={"Authorization": f"token {token}"}, timeout=60) as hub:
        def remove(user: dict[str, Any]) -> None:
            for server in user.get("servers") or {}:
                hub.request("DELETE", f"/users/{user['name']}/servers/{server}", json={"remove": True})
            hub.delete(f"/users/{user['name']}")

        # The load test leaves a hundred users: one by one their removal took over a minute.
        ours = [u for u in hub.get("/users").json() if u["name"].startswith(root.name)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(remove, ours))
