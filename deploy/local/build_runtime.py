"""Narrows the OCI spec of build-step containers before runc creates them.

The engine's legacy builder runs each Dockerfile step in a container it configures itself: the
build API has no setting for capabilities or a per-step process limit, so root steps (apt, a
repository's own ``RUN``) would get Docker's default capability set. The engine runs every container
through ``build-runtime`` (docker.sh registers it as the default runtime); for ``create`` it calls
this script, which edits the bundle's ``config.json`` only when the container's cgroup lies under
the builds' cgroup, then runc carries on as usual. Servers and Kiln's own containers are untouched.

    build_runtime.py <bundle directory> <cgroup name> <capabilities, comma separated> <pids limit>
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

CAP_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def is_build(spec: dict[str, Any], cgroup: str) -> bool:
    """A build step is any container placed in the builds' cgroup (the builder's ``cgroupparent``)."""
    # The same test as build-runtime's grep: an absolute path under /<cgroup>/ (a relative one would
    # be placed under the engine's own cgroup, outside the builds' limits; the builder refuses it).
    path = str(spec.get("linux", {}).get("cgroupsPath", ""))
    return path.startswith("/" + cgroup.strip("/") + "/")


def narrow(spec: dict[str, Any], keep: set[str], pids_limit: int) -> dict[str, Any]:
    """Keep only capabilities in ``keep``; cap the step's processes; forbid gaining privileges."""
    process = spec.setdefault("process", {})
    caps = process.setdefault("capabilities", {})
    for name in CAP_SETS:
        if name in caps:
            caps[name] = [c for c in caps[name] if c in keep]
    process["noNewPrivileges"] = True
    if pids_limit > 0:
        pids = spec.setdefault("linux", {}).setdefault("resources", {}).setdefault("pids", {})
        current = int(pids.get("limit") or 0)
        pids["limit"] = pids_limit if current <= 0 else min(current, pids_limit)
    return spec


def main(argv: list[str]) -> int:
    bundle, cgroup, caps, pids = argv[1:5]
    path = os.path.join(bundle, "config.json")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    if not is_build(spec, cgroup):
        return 0
    keep = {"CAP_" + c.strip().upper().removeprefix("CAP_") for c in caps.split(",") if c.strip()}
    narrow(spec, keep, int(pids))
    # Written beside and renamed, so runc never reads half a file.
    fd, tmp = tempfile.mkstemp(dir=bundle, prefix=".config.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
