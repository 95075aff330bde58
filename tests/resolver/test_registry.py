"""Registry checks against a real local registry with htpasswd auth (the token flow: test_registry_tokens.py)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator

import pytest

from kiln_resolver.registry import Registry, RegistryError

from ..stack.test_local_stack import free_port, script

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second real registry, with htpasswd auth, holding one tiny image kiln/binder-probe:abc."""
    port = free_port()
    env = {"KILN_REGISTRY_INSTANCE": "resolver-auth", "KILN_REGISTRY_PORT": str(port),
           "KILN_REGISTRY_HTPASSWD_USER": "kiln", "KILN_REGISTRY_HTPASSWD_PASSWORD": "s3cret"}
    assert script("registry.sh", "start", env=env).returncode == 0
    docker_env = {**os.environ, "DOCKER_CONFIG": str(tmp_path_factory.mktemp("docker-config"))}
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    name = f"127.0.0.1:{port}/kiln/binder-probe:abc"
    run = lambda *a, **kw: subprocess.run(a, env=docker_env, check=True, capture_output=True, timeout=120, **kw)
    run("docker", "import", "-", name, input=layer.getvalue())
    run("docker", "login", "-u", "kiln", "--password-stdin", f"127.0.0.1:{port}", input=b"s3cret")
    run("docker", "push", name)
    run("docker", "rmi", name)
    yield f"http://127.0.0.1:{port}"
    script("registry.sh", "stop", env=env)


async def test_htpasswd_registry(auth_registry: str) -> None:
    registry = Registry(auth_registry, "kiln", "s3cret")
    assert await registry.image_exists("kiln/binder-probe", "abc") is True
    assert await registry.image_exists("kiln/binder-probe", "def") is False
    assert await registry.image_exists("kiln/binder-other", "abc") is False
    with pytest.raises(RegistryError, match="refused Kiln's credentials"):
        await Registry(auth_registry, "kiln", "wrong").image_exists("kiln/binder-probe", "abc")


async def test_unreachable_registry_is_an_error_not_a_miss() -> None:
    with pytest.raises(RegistryError, match="could not be reached"):
        await Registry(f"http://127.0.0.1:{free_port()}").image_exists("kiln/x", "y")
