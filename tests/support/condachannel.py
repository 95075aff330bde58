"""A real conda channel of packages made here, for builds that cannot reach conda-forge.

Packages are noarch ``.tar.bz2`` archives laid out as conda-build makes them (``info/index.json``,
``info/paths.json``, ``info/files`` and the files themselves), indexed with rattler's indexer (the
one pixi and rattler-build use), and served over HTTP on the build network's gateway address, at
the package-mirror port builds may reach (deploy/local/network.sh, KILN_BUILD_MIRROR_PORTS).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import ssl
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BUILD_GATEWAY = os.environ.get("KILN_BUILD_GATEWAY", "172.29.1.1")
MIRROR_PORT = int(next((p for p in os.environ.get("KILN_BUILD_MIRROR_PORTS", "790").split(",") if p.isdigit()), "790"))


def conda_package(out_dir: Path, name: str, version: str, files: dict[str, tuple[bytes, int]],
                  depends: list[str] | None = None) -> Path:
    """A noarch (generic) package ``name-version-0.tar.bz2`` in ``out_dir``; ``files`` maps a path in
    the environment to (content, mode)."""
    now = int(time.time())
    index = {"name": name, "version": version, "build": "0", "build_number": 0, "depends": depends or [],
             "subdir": "noarch", "noarch": "generic", "license": "BSD-3-Clause", "timestamp": now * 1000}
    paths = {"paths_version": 1, "paths": [
        {"_path": path, "path_type": "hardlink", "sha256": hashlib.sha256(data).hexdigest(), "size_in_bytes": len(data)}
        for path, (data, _) in sorted(files.items())]}
    members: dict[str, tuple[bytes, int]] = {
        "info/index.json": (json.dumps(index).encode(), 0o644),
        "info/paths.json": (json.dumps(paths).encode(), 0o644),
        "info/files": (("\n".join(sorted(files)) + "\n").encode(), 0o644),
        **files,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}-{version}-0.tar.bz2"
    with tarfile.open(target, "w:bz2") as tar:
        for path, (data, mode) in members.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))
    return target


async def index_channel(root: Path) -> None:
    """Write each subdir's repodata.json as a conda channel has it (plain JSON: no shards, no zstd)."""
    from rattler.index import index_fs

    (root / "linux-64").mkdir(parents=True, exist_ok=True)
    await index_fs(root, write_zst=False, write_shards=False, force=True)


@dataclass
class Served:
    root: Path  # the folder of channels: root/<channel>/<subdir>/...
    alias: str  # conda's channel_alias for it: channel names resolve under this URL


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serve_channels(root: Path, tls: ssl.SSLContext | None = None) -> Iterator[Served]:
    """Serve ``root`` (a folder of channels) where builds can reach it, until the block ends; over
    HTTPS with ``tls``."""
    server = ThreadingHTTPServer((BUILD_GATEWAY, MIRROR_PORT), functools.partial(_Quiet, directory=str(root)))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield Served(root, f"{'https' if tls else 'http'}://{BUILD_GATEWAY}:{MIRROR_PORT}")
    finally:
        server.shutdown()
        server.server_close()
