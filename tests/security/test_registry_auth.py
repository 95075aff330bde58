"""The registry is not an open door: the local registry (deploy/local/registry.sh, token auth) lets no
one in without credentials, and only the builder (and the operator's admin) may push.

Real pushes through the real engine to the real registry `make up` runs; each refusal has a
positive control that does the same thing with the right account.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.docker]
ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "127.0.0.1:5000"
TOKEN_URL = "http://127.0.0.1:5001/token"


def password(user: str) -> str:
    path = ROOT / ".state" / "secrets" / f"registry-{user}"
    if not path.exists():
        pytest.skip("the local registry's accounts are not made yet (make up makes them)")
    return path.read_text().strip()


def docker_config(tmp: Path, user: str | None) -> dict[str, str]:
    """An environment whose docker CLI logs in to the registry as ``user`` (None: nobody)."""
    auths = {}
    if user is not None:
        auths[REGISTRY] = {"auth": base64.b64encode(f"{user}:{password(user)}".encode()).decode()}
    folder = tmp / (user or "anonymous")
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"auths": auths}))
    return {**os.environ, "DOCKER_CONFIG": str(folder)}


@pytest.fixture
def image() -> Iterator[str]:
    """A one-file image, tagged for a repository of the registry that nothing else uses."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    name = f"{REGISTRY}/kiln/binder-security-probe-{uuid.uuid4().hex[:8]}:v1"  # where the builder may push
    subprocess.run(["docker", "import", "-", name], input=layer.getvalue(), check=True, capture_output=True, timeout=60)
    yield name
    subprocess.run(["docker", "rmi", "-f", name], capture_output=True, timeout=60)


def push(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "push", name], env=env, capture_output=True, text=True, timeout=120)


def test_nobody_gets_in_without_credentials() -> None:
    assert httpx.get(f"http://{REGISTRY}/v2/_catalog").status_code == 401
    refused = httpx.get(TOKEN_URL, params={"service": "kiln-registry", "scope": "repository:kiln/base:pull"})
    assert refused.status_code == 401
    wrong = httpx.get(TOKEN_URL, params={"service": "kiln-registry", "scope": "repository:kiln/base:pull"},
                      auth=("puller", "not-the-password"))
    assert wrong.status_code == 401
    # Positive control: the right password is given a token.
    right = httpx.get(TOKEN_URL, params={"service": "kiln-registry", "scope": "repository:kiln/base:pull"},
                      auth=("puller", password("puller")))
    assert right.status_code == 200 and right.json()["token"]


def test_only_the_builder_and_admin_are_granted_push() -> None:
    def granted(user: str, repo: str = "kiln/binder-x") -> list[str]:
        r = httpx.get(TOKEN_URL, params={"service": "kiln-registry", "scope": f"repository:{repo}:pull,push"},
                      auth=(user, password(user)))
        payload = r.json()["token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return list(claims["access"][0]["actions"])

    assert granted("puller") == ["pull"]
    assert granted("builder") == ["pull", "push"]
    assert granted("admin") == ["pull", "push"]
    # The builder pushes what builds make, not Kiln's own images (which every service runs from).
    assert granted("builder", "kiln/env") == ["pull", "push"]
    assert granted("builder", "kiln/gateway") == ["pull"] and granted("builder", "kiln/base") == ["pull"]
    assert granted("admin", "kiln/gateway") == ["pull", "push"]


def test_a_push_without_the_builders_account_is_refused(image: str, tmp_path: Path) -> None:
    anonymous = push(image, docker_config(tmp_path, None))
    assert anonymous.returncode != 0 and "unauthorized" in anonymous.stderr.lower(), anonymous
    puller = push(image, docker_config(tmp_path, "puller"))
    assert puller.returncode != 0 and "denied" in puller.stderr.lower(), puller
    # Positive control: the builder's account pushes the same image.
    builder = push(image, docker_config(tmp_path, "builder"))
    assert builder.returncode == 0, builder
