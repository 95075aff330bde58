"""A fork bomb in postBuild ends in a clear `failed` event and leaves the machine responsive.

The real builder (in this process, as in tests/builder) builds on the real engine. Build steps run
under the kiln-builds cgroup (deploy/local/docker.sh), whose process limit the bomb runs into; while
it does, a container of the kind that serves users still starts, and when the build has been
stopped no process of it is left.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from kilnbus import Phase

from ..builder.conftest import BuildHarness, builder  # noqa: F401 (the fixture)
from ..bus.helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.kafka, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
ROOT = Path(__file__).resolve().parents[2]
# Forks until the limit stops it, then keeps the step busy, as a real attack would.
BOMB = "#!/bin/bash\nbomb() { bomb | bomb & }\nbomb\nwhile true; do sleep 1; done\n"


def build_processes() -> int:
    """Processes now in the builds' cgroup (cgroup v1 or v2)."""
    for path in (Path("/sys/fs/cgroup/pids/kiln-builds/pids.current"), Path("/sys/fs/cgroup/kiln-builds/pids.current")):
        if path.exists():
            return int(path.read_text())
    pytest.skip("no kiln-builds cgroup: deploy/local/docker.sh makes it when run as root")


def build_limit() -> int:
    for path in (Path("/sys/fs/cgroup/pids/kiln-builds/pids.max"), Path("/sys/fs/cgroup/kiln-builds/pids.max")):
        if path.exists():
            return int(path.read_text())
    pytest.skip("no kiln-builds cgroup")


async def test_a_fork_bomb_fails_the_build_and_the_machine_stays_responsive(builder: BuildHarness) -> None:  # noqa: F811
    await builder.stop_builders()
    await builder.start_builder(build_timeout_s=45, build_cpus=1)
    url, ref = builder.serve_repo("forkbomb", {"postBuild": BOMB})
    rid, _ = await builder.request(url, ref)
    limit = build_limit()
    # The bomb is at the limit: the cgroup holds (nearly) as many processes as it may.
    await wait_until(lambda: build_processes() >= limit * 0.9 or builder.final(rid) is not None, 120,
                     "the fork bomb to reach the builds' process limit")
    assert builder.final(rid) is None, "the build ended before the bomb went off"
    # Meanwhile the machine starts a user container as usual: the limit is the builds', not the host's.
    image = (ROOT / ".state" / "base-image").read_text().strip()
    started = time.monotonic()
    alive = subprocess.run(["docker", "run", "--rm", "--network", "kiln-users", "--user", "1000", image,
                            "python3", "-c", "print('still here')"], capture_output=True, text=True, timeout=120)
    assert alive.returncode == 0 and "still here" in alive.stdout, alive.stderr
    print(f"a container started and ran in {time.monotonic() - started:.1f} s during the bomb")

    failed = await builder.outcome(rid, timeout=180)
    assert failed.phase is Phase.FAILED
    # Either the bomb's own shell gives up (forks keep failing) or the time limit stops the build:
    # both say so in words, not a stack trace.
    assert (failed.failure_cause == "postbuild_failed" and "postBuild" in failed.message
            or failed.failure_cause == "build_timeout" and "longer than the limit of 45 seconds" in failed.message), failed
    assert "Traceback" not in failed.message
    # Nothing of the bomb is left once the build is stopped.
    await wait_until(lambda: build_processes() == 0, 60, "the bomb's processes to be gone")
    await builder.stop_builders()
    await builder.start_builder()
