"""Installs an environment.yml's conda packages into /srv/conda/envs/notebook, inside an image build.

Kiln's builder writes what to install (channel URLs, match specs) to a JSON file beside this script
in the environment image's build context; the image's own py-rattler (a tool environment of its
own under /opt/kiln-conda, outside the user's) solves for this machine and installs. Runs as the
user, as every environment step does; packages' link scripts are not run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from rattler import VirtualPackage, install, solve
from rattler.exceptions import (
    DetectVirtualPackageError,
    FetchRepoDataError,
    GatewayError,
    InvalidChannelError,
    InvalidMatchSpecError,
    IoError,
    LinkError,
    SolverError,
    TransactionError,
)

# What a solve or an install can fail with that the user should read, rather than a traceback.
SOLVE_ERRORS = (SolverError, GatewayError, FetchRepoDataError, InvalidChannelError, InvalidMatchSpecError,
                DetectVirtualPackageError, OSError)
INSTALL_ERRORS = (TransactionError, LinkError, IoError, OSError)


async def main(config_file: str) -> int:
    config = json.loads(Path(config_file).read_text())
    channels: list[str] = config["channels"]
    specs: list[str] = config["specs"]
    prefix: str = config["prefix"]
    print(f"Kiln: solving {len(specs)} conda package(s) from {', '.join(channels)}", flush=True)
    try:
        # Only the channels the builder named: no relations a channel's repodata declares.
        records = await solve(sources=channels, specs=specs, platforms=["linux-64", "noarch"],
                              virtual_packages=VirtualPackage.detect(), channel_relations="disabled")
    except SOLVE_ERRORS as exc:  # the solver's own words name what is missing or conflicting
        print(f"kiln-conda: the conda environment cannot be solved: {' '.join(str(exc).split())}", flush=True)
        return 2
    for record in sorted(records, key=lambda r: r.name.normalized):
        print(f"  {record.name.normalized} {record.version} ({record.channel})", flush=True)
    try:
        await install(records, target_prefix=prefix, show_progress=False, execute_link_scripts=False)
    except INSTALL_ERRORS as exc:
        print(f"kiln-conda: installing the conda packages failed: {' '.join(str(exc).split())}", flush=True)
        return 3
    print(f"Kiln: {len(records)} conda package(s) installed in {prefix}", flush=True)
    return 0


if __name__ == "__main__":
    code = asyncio.run(main(sys.argv[1]))
    sys.stdout.flush()
    # Everything is written and flushed: leave without the interpreter's teardown, during which
    # py-rattler's native runtime now and then crashed (a segfault after a finished install).
    os._exit(code)
