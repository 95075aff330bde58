"""Strangers' code cannot reach Kiln: a real build step and a real launched server of a hostile
repository try every part of Kiln on every address of the host, and the Docker socket.

The repository is launched through the running stack's gateway (`make up`): its postBuild runs
tests/security/probe.py during the build, its `start` runs it again inside the launched server and
leaves the result in the home folder, which the test reads through Jupyter's contents API with the
server's token. The positive control runs the same probe in a container on the host's network,
where it must find Kiln's parts open, so a probe that could not see anything would fail the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..e2e.test_binder import launch, spec_for
from ..support.githost import make_repo
from ..support.stack import HUB_API, user_gateway

pytestmark = [pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PROBE = (Path(__file__).parent / "probe.py").read_text()
# Kafka (broker, controller), registry and its token server, the proxy and its API, the hub API,
# the gateway, analytics, the git server and the services' /metrics.
PORTS = [9092, 9093, 5000, 5001, 8000, 8001, 8081, 8585, 8590, 8765, 9101, 9102, 9103]
BUILD_GATEWAY = "172.29.1.1"


def host_addresses() -> list[str]:
    """Every IPv4 address the host has, loopback and the user and build networks' gateways included."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return sorted(set(found) | {"127.0.0.1", user_gateway(), BUILD_GATEWAY})


def targets(extra: list[str] | None = None) -> str:
    return ",".join([f"{address}:{port}" for address in host_addresses() for port in PORTS] + (extra or []))


@pytest.fixture(scope="module")
def user_server() -> Iterator[str]:
    """Something listening on the users' network, as a server's app would: address:port."""
    image = (ROOT / ".state" / "base-image").read_text().strip()
    name = f"kiln-sec-listener-{uuid.uuid4().hex[:6]}"
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "--network", "kiln-users", "--user", "1000", image,
                    "python3", "-m", "http.server", "8888"], check=True, capture_output=True, timeout=60)
    address = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
                             check=True, capture_output=True, text=True).stdout.strip()
    yield f"{address}:8888"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def probe_result(text: str) -> dict[str, Any]:
    line = next(ln for ln in text.splitlines() if ln.startswith("PROBE "))
    return dict(json.loads(line[len("PROBE "):]))


@pytest.fixture(scope="module")
def repos() -> Iterator[Path]:
    root = ROOT / ".state" / "git-repos" / f"sec{uuid.uuid4().hex[:6]}"
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_probe_sees_kilns_parts_from_the_host_network(user_server: str) -> None:
    """Positive control: on the host's network the same probe finds Kafka, the registry, the hub API
    and a user's server."""
    image = (ROOT / ".state" / "base-image").read_text().strip()
    out = subprocess.run(["docker", "run", "--rm", "--network", "host", "-i", image, "python3", "-", "control",
                          targets([user_server])], input=PROBE, capture_output=True, text=True, timeout=180)
    result = probe_result(out.stdout)
    assert {"127.0.0.1:9092", "127.0.0.1:5000", f"{user_gateway()}:8081", "127.0.0.1:8001", user_server} <= set(result["open"]), result
    assert result["pip"], result


async def test_a_build_and_a_server_reach_the_internet_and_nothing_of_kiln(repos: Path, user_server: str) -> None:
    make_repo(repos, "prober", {
        "probe.py": PROBE,
        "requirements.txt": f"# {uuid.uuid4().hex}\n",  # a build of its own, not a cached image
        "postBuild": f"#!/bin/bash\nset -e\npython3 probe.py build {targets([user_server])}\n",
        "start": f"#!/bin/bash\npython3 probe.py server {targets([user_server])} > \"$HOME/probe-server.txt\" 2>&1\nexec \"$@\"\n",
    })
    events = await launch(spec_for(repos, "prober"))
    assert events[-1]["phase"] == "ready", events[-3:]
    log = "".join(e.get("message", "") for e in events if e["phase"] == "building")
    build = probe_result(log)
    ready = events[-1]
    with httpx.Client(headers={"Authorization": f"token {ready['token']}"}, timeout=30) as client:
        r = client.get(ready["url"] + "api/contents/probe-server.txt", params={"content": "1", "type": "file"})
        assert r.status_code == 200, r.text
        server = probe_result(r.json()["content"])
    token = (ROOT / ".state" / "hub" / "launcher-token").read_text().strip()
    user, name = ready["url"].rstrip("/").split("/")[-2:]
    httpx.request("DELETE", f"{HUB_API}/users/{user}/servers/{name}", json={"remove": True},
                  headers={"Authorization": f"token {token}"}, timeout=30)

    # A build step reaches nothing on the host, not even the hub, nor users' servers; it reaches the
    # package index. A server does not reach other servers either.
    assert build["open"] == [], build
    assert build["pip"], build
    assert not build["docker_socket"]
    assert build["no_new_privs"] == "1"
    # postBuild runs as the notebook user, with no capabilities (root steps: docs/security.md).
    assert build["uid"] == 1000 and build["cap_eff"] == "0000000000000000", build
    # A server reaches exactly one thing on the host: the hub's API, which jupyterhub-singleuser needs.
    assert server["open"] == [f"{user_gateway()}:8081"], server
    assert server["pip"], server
    assert not server["docker_socket"]
    assert server["uid"] == 1000 and server["cap_eff"] == "0000000000000000" and server["no_new_privs"] == "1", server


@pytest.mark.parametrize(("dockerfile", "says"), [
    ("FROM kiln/base:latest\nADD http://127.0.0.1:8590/metrics /tmp/m\nRUN head /tmp/m\n", "ADD from a URL"),
    ("# escape=`\nFROM kiln/base:latest\nADD `\nhttp://127.0.0.1:8590/ /tmp/f\nRUN head /tmp/f\n", "ADD from a URL"),
    ("FROM kiln/base:latest\nADD \\\n\n  http://127.0.0.1:8585/health /tmp/h\nRUN head /tmp/h\n", "ADD from a URL"),
    # Python's splitlines() cut at \f and \x1c, Docker does not: the engine fetched the builder's metrics.
    ("FROM kiln/base:latest\nADD\x0chttp://127.0.0.1:9102/metrics /tmp/m\nRUN head /tmp/m\n",
     "line 2 contains a control character"),
    ("FROM kiln/base:latest\nADD x\x1chttp://127.0.0.1:9102/metrics /tmp/\nRUN head /tmp/metrics\n",
     "line 2 contains a control character"),
    # Docker's lexer drops the escape character from the name; the engine pulled from loopback.
    ("# escape=`\nFROM 127.0.0`.1:8590/x\nRUN true\n", "registry on a private or local address"),
])
async def test_a_dockerfile_cannot_make_the_engine_fetch_from_kilns_network(repos: Path, dockerfile: str, says: str) -> None:
    """The engine fetches ADD's URLs and pulls FROM's images on the host's network: the builder refuses
    them before building."""
    name = f"adder{uuid.uuid4().hex[:6]}"
    make_repo(repos, name, {"Dockerfile": dockerfile})
    events = await launch(spec_for(repos, name))
    assert events[-1]["phase"] == "failed", events[-3:]
    assert says in events[-1]["message"], events[-1]
    log = "".join(e.get("message", "") for e in events)
    assert "Step 1/" not in log and "Kiln analytics" not in log and "groups" not in log, log[-2000:]


async def test_a_base_image_with_onbuild_triggers_is_refused(repos: Path) -> None:
    """ONBUILD triggers of a base image would run in this build unchecked (an ADD from a URL, say)."""
    base = (ROOT / ".state" / "base-image").read_text().strip()
    trap = f"kiln-security-onbuild-{uuid.uuid4().hex[:8]}:1"
    subprocess.run(["docker", "build", "-q", "-t", trap, "-"], input=f"FROM {base}\nONBUILD RUN true\n",
                   text=True, check=True, capture_output=True, timeout=120)
    try:
        name = f"onbuild{uuid.uuid4().hex[:6]}"
        make_repo(repos, name, {"Dockerfile": f"FROM {trap}\nRUN echo built\n"})
        events = await launch(spec_for(repos, name))
        assert events[-1]["phase"] == "failed" and "has ONBUILD triggers" in events[-1]["message"], events[-3:]
        # Control: the same Dockerfile from the plain base image builds.
        make_repo(repos, name + "ok", {"Dockerfile": "FROM kiln/base:latest\nRUN echo built\n"})
        assert (await launch(spec_for(repos, name + "ok")))[-1]["phase"] == "ready"
    finally:
        subprocess.run(["docker", "rmi", "-f", trap], capture_output=True, timeout=60)


# A root build step reports what it may do: its uid and capabilities, whether it can open a raw
# socket (sniffing, spoofing) or make a device node, and its own process limit.
ROOT_STEP = r'''
import json, os, socket, pathlib
def tried(f):
    try:
        f(); return True
    except OSError:
        return False
status = dict(l.split(":\t", 1) for l in pathlib.Path("/proc/self/status").read_text().splitlines() if ":\t" in l)
pids = next((p.read_text().strip() for p in map(pathlib.Path, ["/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"]) if p.exists()), "")
print("ROOTSTEP " + json.dumps({"uid": os.getuid(), "cap_bnd": int(status["CapBnd"], 16), "pids_max": pids,
    "raw_socket": tried(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()),
    "mknod": tried(lambda: os.mknod("/tmp/kiln-null", 0o600 | 0o020000, os.makedev(1, 3)))}))
'''
CAP_CHOWN, CAP_SETUID, CAP_SETGID, CAP_NET_BIND_SERVICE, CAP_NET_RAW, CAP_SYS_CHROOT, CAP_MKNOD, CAP_SETFCAP = 0, 7, 6, 10, 13, 18, 27, 31


def root_step(log: str) -> dict[str, Any]:
    line = next(ln for ln in log.splitlines() if ln.startswith("ROOTSTEP "))
    return dict(json.loads(line[len("ROOTSTEP "):]))


async def test_root_build_steps_keep_only_what_apt_needs(repos: Path) -> None:
    """A Dockerfile's root `RUN` runs with the capabilities apt and dpkg need and no others, under a
    process limit of its own; apt still installs a package. The control builds the same step on the
    engine without the builds' cgroup, where Docker's defaults apply and the probe finds them."""
    step = ROOT_STEP.replace("\n", "\\n").replace('"', '\\"')
    # The unique line first: a step the engine has cached prints nothing, and the probe's line is read from the log.
    dockerfile = (f"FROM kiln/base:latest\nUSER root\nRUN echo {uuid.uuid4().hex}\n"
                  f"RUN printf \"{step}\" > /tmp/step.py && python3 /tmp/step.py\n"
                  "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends tree >/dev/null && tree --version\n"
                  "USER 1000\n")
    name = f"rootstep{uuid.uuid4().hex[:6]}"
    make_repo(repos, name, {"Dockerfile": dockerfile})
    events = await launch(spec_for(repos, name))
    assert events[-1]["phase"] == "ready", events[-3:]
    log = "".join(e.get("message", "") for e in events if e["phase"] == "building")
    assert "tree v" in log, log[-2000:]
    built = root_step(log)
    assert built["uid"] == 0, built
    for cap in (CAP_CHOWN, CAP_SETUID, CAP_SETGID):
        assert built["cap_bnd"] & (1 << cap), built
    for cap in (CAP_NET_RAW, CAP_MKNOD, CAP_SYS_CHROOT, CAP_SETFCAP, CAP_NET_BIND_SERVICE):
        assert not built["cap_bnd"] & (1 << cap), (cap, built)
    assert not built["raw_socket"] and not built["mknod"], built
    assert built["pids_max"] == os.environ.get("KILN_BUILD_STEP_PIDS_LIMIT", "1024"), built

    # Control: the same step built outside the builds' cgroup keeps Docker's defaults, and the probe sees them.
    base = (ROOT / ".state" / "base-image").read_text().strip()
    out = subprocess.run(["docker", "build", "--no-cache", "--network", "kiln-builds", "-"],
                         input=dockerfile.split("RUN apt-get")[0].replace("kiln/base:latest", base),
                         env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    control = root_step(out.stdout)
    assert control["uid"] == 0 and control["cap_bnd"] & (1 << CAP_NET_RAW) and control["raw_socket"] and control["mknod"], control
