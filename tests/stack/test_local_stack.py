"""The local stack's scripts: clear errors on bad set-ups, idempotence, and the parts really working."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..support.stack import HUB_API

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "local"


def script(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LOCAL / name), *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH holding every program of /usr/bin and /usr/sbin except ``missing``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/usr/sbin"):
        for prog in os.listdir(d):
            if prog not in missing and not (bindir / prog).exists():
                (bindir / prog).symlink_to(Path(d) / prog)
    return str(bindir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def assert_clear_failure(proc: subprocess.CompletedProcess[str], cause: str, fix: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert cause in proc.stderr and "fix:" in proc.stderr and fix in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_missing_java_names_cause_and_fix(tmp_path: Path) -> None:
    env = {"PATH": path_without(tmp_path, "java"), "KILN_KAFKA_INSTANCE": "nojava",
           "KILN_KAFKA_PORT": str(free_port()), "KILN_KAFKA_CONTROLLER_PORT": str(free_port())}
    assert_clear_failure(script("kafka.sh", "start", env=env), "Java is not installed", "apt-get install openjdk-17")


def test_missing_docker_names_cause_and_fix(tmp_path: Path) -> None:
    # Its own state folder: a failed start must not touch the running stack's (the engine's runtime wrapper is there).
    env = {"PATH": path_without(tmp_path, "docker"), "KILN_STATE": str(tmp_path / "state")}
    assert_clear_failure(script("docker.sh", "start", env=env), "docker client is not installed", "apt-get install docker.io")


def test_port_in_use_names_cause_and_fix(busy_port: int) -> None:
    env = {"KILN_KAFKA_INSTANCE": "busy", "KILN_KAFKA_PORT": str(busy_port), "KILN_KAFKA_CONTROLLER_PORT": str(free_port())}
    assert_clear_failure(script("kafka.sh", "start", env=env), f"port {busy_port} is already in use", "KILN_KAFKA_PORT")
    env = {"KILN_REGISTRY_INSTANCE": "busy", "KILN_REGISTRY_PORT": str(busy_port)}
    clients = {path: path.read_bytes() for path in (ROOT / ".state" / "docker").glob("*/config.json")}
    assert_clear_failure(script("registry.sh", "start", env=env), f"port {busy_port} is already in use", "KILN_REGISTRY_PORT")
    # A start that fails writes nothing: the local registry's docker client configurations (the tests'
    # and scripts' pushes, the hub's pulls) still name it, not the busy port (they were rewritten once).
    assert {path: path.read_bytes() for path in clients} == clients


@pytest.mark.kafka
@pytest.mark.docker
@pytest.mark.hub
def test_second_up_changes_nothing_and_status_shows_addresses() -> None:
    first = script("up.sh", "infra")
    assert first.returncode == 0, first.stdout + first.stderr
    again = script("up.sh", "infra")
    assert again.returncode == 0, again.stderr
    lines = [ln for ln in again.stdout.splitlines() if ln.startswith("  ")]
    assert lines and all(ln.startswith("  ok ") for ln in lines), again.stdout
    assert not any(word in again.stdout for word in ("starting", "installing", "building", "fetching"))
    status = script("status.sh").stdout
    for expected in ("kafka      running   127.0.0.1:9092", "registry   running   127.0.0.1:5000",
                     f"jupyterhub running   http://127.0.0.1:8000 (API {HUB_API})", "network    isolated  kiln-users",
                     "base image 127.0.0.1:5000/kiln/base:"):
        assert expected in status, status


@pytest.mark.docker
def test_registry_with_htpasswd_requires_credentials() -> None:
    port = free_port()
    env = {"KILN_REGISTRY_INSTANCE": "auth-test", "KILN_REGISTRY_PORT": str(port),
           "KILN_REGISTRY_HTPASSWD_USER": "kiln", "KILN_REGISTRY_HTPASSWD_PASSWORD": "s3cret"}
    started = script("registry.sh", "start", env=env)
    assert started.returncode == 0, started.stderr
    try:
        url = f"http://127.0.0.1:{port}/v2/"
        refused = httpx.get(url)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(url, auth=("kiln", "wrong")).status_code == 401
        assert httpx.get(url, auth=("kiln", "s3cret")).status_code == 200
    finally:
        script("registry.sh", "stop", env=env)


def base_image() -> str:
    return (ROOT / ".state" / "base-image").read_text().strip()


@pytest.mark.docker
def test_base_image_runs_as_jovyan_with_jupyter_and_extra_cas() -> None:
    image = base_image()
    probe = ("import os, jupyterlab, jupyterhub; "
             "print(os.getuid(), os.environ['HOME'], jupyterhub.__version__); "
             "print(open('/usr/local/share/ca-certificates/kiln-extra-ca.crt').read() in open('/etc/ssl/certs/ca-certificates.crt').read())")
    out = subprocess.run(["docker", "run", "--rm", "--network", "host", image, "python3", "-c", probe],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ident, trusted = out.stdout.splitlines()
    assert ident == "1000 /home/jovyan 6.1.1"
    assert trusted == "True"
    # The extra bundle baked in is the operator's (here: this machine's) bundle.
    baked = subprocess.run(["docker", "run", "--rm", image, "cat", "/usr/local/share/ca-certificates/kiln-extra-ca.crt"],
                           capture_output=True, text=True, timeout=60).stdout
    assert baked == Path("/etc/ssl/certs/ca-certificates.crt").read_text()


@pytest.mark.hub
@pytest.mark.slow
def test_hub_spawns_the_base_image_with_the_launcher_token() -> None:
    """The launcher's service token can do the whole BinderHub flow, and the server wants a token."""
    token = (ROOT / ".state" / "hub" / "launcher-token").read_text().strip()
    api = HUB_API
    user = f"stacktest-{os.getpid()}"
    with httpx.Client(headers={"Authorization": f"token {token}"}, timeout=60) as hub:
        assert hub.post(f"{api}/users/{user}").status_code == 201
        try:
            r = hub.post(f"{api}/users/{user}/servers/probe", json={"image": base_image()})
            assert r.status_code in (201, 202), r.text
            ready = None
            with hub.stream("GET", f"{api}/users/{user}/servers/probe/progress", timeout=120) as events:
                for line in events.iter_lines():
                    if line.startswith("data:") and '"ready": true' in line:
                        ready = line
                        break
            assert ready is not None and f"/user/{user}/probe/" in ready
            server_token = hub.post(f"{api}/users/{user}/tokens", json={"note": "stack test"}).json()["token"]
            url = f"http://127.0.0.1:8000/user/{user}/probe/api/status"
            assert httpx.get(url, headers={"Authorization": f"token {server_token}"}).status_code == 200
            assert httpx.get(url).status_code in (302, 403)
            # Not admin: the launcher's token cannot touch the hub's own configuration.
            assert hub.get(f"{api}/proxy").status_code == 403
        finally:
            hub.request("DELETE", f"{api}/users/{user}/servers/probe", json={"remove": True})
            hub.delete(f"{api}/users/{user}")


def test_each_service_gets_only_the_secrets_it_reads() -> None:
    """The hub token that reads every user's auth state, forge API tokens and private repositories'
    credentials reach the services that use them, and no other (services.sh writes each one's env)."""
    secrets = {"KILN_HUB_AUTH_STATE_TOKEN": "s-hub-auth-state", "KILN_GITHUB_ACCESS_TOKEN": "s-github",
               "KILN_GITLAB_ACCESS_TOKEN": "s-gitlab", "KILN_GITEA_ACCESS_TOKEN": "s-gitea",
               "KILN_BITBUCKET_ACCESS_TOKEN": "s-bitbucket", "KILN_SWH_ACCESS_TOKEN": "s-swh",
               "KILN_GIT_CREDENTIALS": '[{"url": "https://git.example.org", "username": "u", "password": "s-git"}]'}
    readers = {"resolver": set(secrets), "builder": {"KILN_SWH_ACCESS_TOKEN", "KILN_GIT_CREDENTIALS"}}
    for service in ("gateway", "resolver", "builder", "launcher", "analytics"):
        written = script("services.sh", "env", service, env=secrets)
        assert written.returncode == 0, written.stderr
        env = Path(written.stdout.strip().splitlines()[-1]).read_text()
        for name, value in secrets.items():
            given = f"{name}=" in env and value.split('"password": "')[-1].rstrip('"}]') in env
            assert given == (name in readers.get(service, set())), (service, name)
