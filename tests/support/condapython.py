"""A real conda ``python`` package, built here from CPython's source, for a test channel.

conda-forge's ``python`` cannot be downloaded here, so the tests make their own the way conda-build
does: CPython (the orig tarball of Debian trixie's python3.13, fetched from the Debian mirror the
base image was made from and checked against its SHA-256) configured with conda's long placeholder
prefix, installed, and packed with ``info/paths.json`` naming every file that holds the placeholder
(text or binary), so the installer rewrites it to wherever the environment lands. The build runs
once per machine as a Docker image on the builds' network (cached by the engine); each use copies
the package out of it. Unlike conda-forge's, this Python links the base image's system libraries
(OpenSSL, zlib, libffi) instead of depending on conda packages of them.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

VERSION = "3.13.5"
SOURCE = f"pool/main/p/python3.13/python3.13_{VERSION}.orig.tar.xz"
SOURCE_SHA256 = "93e583f243454e6e9e4588ca2c2662206ad961659863277afcdb96801647d640"
PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"  # conda-build's; longer than any prefix it is replaced by

# Packs the installed prefix as a conda package (runs inside the image, with the base image's Python).
_PACK = r'''
import hashlib, io, json, os, sys, tarfile, time
prefix, out, version, placeholder = sys.argv[1:5]
drop = ("lib/python3.13/test/", "lib/python3.13/idlelib/", "lib/python3.13/tkinter/", "lib/python3.13/turtledemo/")
paths, members = [], []
for root, dirs, names in os.walk(prefix):
    dirs.sort()
    for name in sorted(names):
        full = os.path.join(root, name)
        rel = os.path.relpath(full, prefix)
        if any(rel.startswith(d) for d in drop) or "/__pycache__/" in f"/{rel}":
            continue
        if os.path.islink(full):
            paths.append({"_path": rel, "path_type": "softlink"})
            members.append((rel, full))
            continue
        data = open(full, "rb").read()
        entry = {"_path": rel, "path_type": "hardlink", "sha256": hashlib.sha256(data).hexdigest(),
                 "size_in_bytes": len(data)}
        if placeholder.encode() in data:
            entry["prefix_placeholder"] = placeholder
            entry["file_mode"] = "binary" if b"\0" in data else "text"
        paths.append(entry)
        members.append((rel, full))
index = {"name": "python", "version": version, "build": "0_kiln", "build_number": 0, "depends": [],
         "subdir": "linux-64", "arch": "x86_64", "platform": "linux", "license": "PSF-2.0",
         "timestamp": int(time.time() * 1000)}
os.makedirs(out, exist_ok=True)
with tarfile.open(os.path.join(out, f"python-{version}-0_kiln.tar.bz2"), "w:bz2") as tar:
    for name, content in (("info/index.json", json.dumps(index)),
                          ("info/paths.json", json.dumps({"paths_version": 1, "paths": paths})),
                          ("info/files", "\n".join(p["_path"] for p in paths) + "\n")):
        info = tarfile.TarInfo(name)
        raw = content.encode()
        info.size, info.mode, info.mtime = len(raw), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(raw))
    for rel, full in members:
        tar.add(full, arcname=rel, recursive=False)
'''

_DOCKERFILE = f"""FROM {{base}}
USER root
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libssl-dev zlib1g-dev libffi-dev \\
      libbz2-dev liblzma-dev libsqlite3-dev uuid-dev >/dev/null && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN mirror=$(awk '$1 == "deb" {{print $2; exit}}' /etc/apt/sources.list) \\
 && curl -fsSL -o cpython.tar.xz "${{mirror:-http://deb.debian.org/debian}}/{SOURCE}" \\
 && echo "{SOURCE_SHA256}  cpython.tar.xz" | sha256sum -c - >/dev/null \\
 && tar -xJf cpython.tar.xz --strip-components=1 && rm cpython.tar.xz
RUN ./configure -q --prefix={PLACEHOLDER} --with-ensurepip=install >/dev/null \\
 && make -s -j"$(nproc)" >/dev/null 2>&1 && make -s install >/dev/null 2>&1 \\
 && ln -s python3.13 {PLACEHOLDER}/bin/python && ln -s pip3 {PLACEHOLDER}/bin/pip \\
 && {PLACEHOLDER}/bin/python -c 'import ssl, zlib, ctypes, sqlite3, lzma, bz2'
COPY pack.py /src/pack.py
RUN /srv/venv/bin/python /src/pack.py {PLACEHOLDER} /out {VERSION} {PLACEHOLDER}
"""


def python_package(out_dir: Path, base_image: str, network: str = "kiln-builds") -> Path:
    """Build (once per machine and base image) and copy CPython's conda package into ``out_dir``
    (a channel's ``linux-64`` folder); its path."""
    dockerfile = _DOCKERFILE.replace("{base}", base_image)
    tag = "kiln-test/conda-python:" + hashlib.sha256((dockerfile + _PACK).encode()).hexdigest()[:16]
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0:
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            for name, text in (("Dockerfile", dockerfile), ("pack.py", _PACK)):
                info = tarfile.TarInfo(name)
                info.size = len(text.encode())
                tar.addfile(info, io.BytesIO(text.encode()))
        built = subprocess.run(["docker", "build", "-q", "--network", network, "-t", tag, "-"],
                               input=context.getvalue(), capture_output=True, timeout=1800)
        assert built.returncode == 0, f"building CPython for the test channel failed:\n{built.stderr.decode()[-3000:]}"
    name = f"python-{VERSION}-0_kiln.tar.bz2"
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "cat", f"/out/{name}"],
                            capture_output=True, timeout=300)
    assert copied.returncode == 0, copied.stderr.decode()
    (out_dir / name).write_bytes(copied.stdout)
    return out_dir / name
