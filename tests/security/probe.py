"""What a hostile repository would try from inside a build step or a launched server: connect to every
part of Kiln it can name, look for the Docker socket, and reach the package index.

Copied into test repositories and run there (by postBuild and by start), and on the host network as
the positive control. Prints one JSON object: {"where", "open": [...], "closed": [...],
"docker_socket", "pip", "uid", "cap_eff", "no_new_privs"}. Standard library only: it runs on whatever
Python the image has.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def reachable(target: str) -> bool:
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.5):
            return True
    except OSError:
        return False


def status_field(name: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return ""


def main() -> None:
    where, targets = sys.argv[1], sys.argv[2].split(",")
    with ThreadPoolExecutor(len(targets)) as pool:
        results = dict(zip(targets, pool.map(reachable, targets)))
    pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q", "-d",
                          f"/tmp/kiln-probe-{os.getpid()}", "six==1.16.0"], capture_output=True, text=True, timeout=120)
    print("PROBE " + json.dumps({
        "where": where,
        "open": sorted(t for t, ok in results.items() if ok),
        "closed": sorted(t for t, ok in results.items() if not ok),
        "docker_socket": any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock")),
        "pip": pip.returncode == 0,
        "pip_error": pip.stderr[-300:],
        "uid": os.getuid(),
        "cap_eff": status_field("CapEff"),
        "no_new_privs": status_field("NoNewPrivs"),
    }), flush=True)


if __name__ == "__main__":
    main()
