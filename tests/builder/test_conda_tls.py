"""conda channels over HTTPS behind an operator's own certificate authority.

An operator whose mirror (or TLS-inspecting proxy) has a private CA gives its certificate as the
extra CA bundle; the base image adds it to the system's bundle (/etc/ssl/certs/ca-certificates.crt),
and py-rattler must trust what the system trusts. Rebuilding the base image with a test CA would
cost minutes, so the test puts a bundle holding its CA where the base image's bundle is (a
read-only mount), which is the state `update-ca-certificates` leaves, and solves from a channel
served over HTTPS on the build network's mirror port with a certificate that CA signed. Without the
mount the same solve must fail: verification is on.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.condachannel import BUILD_GATEWAY, Served, conda_package, index_channel, serve_channels
from .conftest import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CHANNEL = f"kiln-tls-{uuid.uuid4().hex[:8]}"
SOLVE = """
import asyncio, sys
from rattler import solve
records = asyncio.run(solve(sources=[sys.argv[1]], specs=["kiln-tls-probe"], platforms=["linux-64", "noarch"],
                            channel_relations="disabled"))
print(*sorted(f"{r.name.normalized} {r.version}" for r in records), flush=True)
import os; os._exit(0)  # py-rattler's runtime can crash in the interpreter's teardown (as conda_install.py notes)
"""


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def ca_and_channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Served]]:
    tmp = tmp_path_factory.mktemp("tls")
    ca_key, ca, key, csr, cert, ext = (tmp / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem", "ext.cnf"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Kiln test mirror CA",
             "-keyout", str(ca_key), "-out", str(ca))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={BUILD_GATEWAY}", "-keyout", str(key), "-out", str(csr))
    ext.write_text(f"subjectAltName = IP:{BUILD_GATEWAY}\nbasicConstraints = CA:FALSE\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1",
             "-extfile", str(ext), "-out", str(cert))
    root = tmp / "channels"
    conda_package(root / CHANNEL / "noarch", "kiln-tls-probe", "1.0", {"share/probe.txt": (b"ok\n", 0o644)})
    asyncio.run(index_channel(root / CHANNEL))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with serve_channels(root, tls) as served:
        yield ca, served


def _solve(served: Served, mounts: list[str]) -> subprocess.CompletedProcess[str]:
    base = (ROOT / ".state" / "base-image").read_text().strip()
    return subprocess.run(["docker", "run", "--rm", "--network", "kiln-builds", *mounts, base,
                           "/opt/kiln-conda/bin/python", "-c", SOLVE, f"{served.alias}/{CHANNEL}"],
                          capture_output=True, text=True, timeout=120)


def test_rattler_trusts_the_ca_the_base_image_adds_to_the_system_bundle(ca_and_channel: tuple[Path, Served]) -> None:
    ca, served = ca_and_channel
    assert served.alias.startswith("https://")
    trusted = _solve(served, ["-v", f"{ca}:/etc/ssl/certs/ca-certificates.crt:ro"])
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert trusted.stdout.strip() == "kiln-tls-probe 1.0"


def test_without_the_ca_the_channel_is_refused(ca_and_channel: tuple[Path, Served]) -> None:
    _, served = ca_and_channel
    untrusted = _solve(served, [])
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr.lower() or "tls" in untrusted.stderr.lower(), untrusted.stderr[-2000:]
