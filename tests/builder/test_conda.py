"""environment.yml with conda packages, built for real on the engine.

conda-forge cannot be reached from here, so the packages come from a real conda channel this module
makes (tests/support/condachannel.py: noarch packages, indexed with rattler's indexer), served on the
build network's package-mirror port, the one place on the host a build may reach. The builder is
told to resolve channel names there (``conda_channel_alias``) and to add no default channel. The
channel's ``python`` is CPython built here from source as a conda package (tests/support/condapython.py),
so an environment.yml that asks for Python gets it from conda, as on conda-forge.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from kilnbus import Phase

from ..support.condachannel import Served, conda_package, index_channel, serve_channels
from ..support.condapython import VERSION as CONDA_PYTHON
from ..support.condapython import python_package
from .conftest import ROOT, BuildHarness, jupyter_answers, run_in

pytestmark = [pytest.mark.docker, pytest.mark.kafka, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

HELLO = b'#!/bin/sh\necho hello from conda\ncat "$(dirname "$0")/../share/kiln-dep/data.txt"\n'
# A channel of this run's own: the first build solves and installs, whatever earlier runs left in
# the registry (environment images are shared by what they install, across runs too).
CHANNEL = f"kiln-test-{uuid.uuid4().hex[:8]}"
ENVIRONMENT = f"""name: whatever-the-author-called-it
channels:
  - {CHANNEL}
  - defaults
dependencies:
  - python>=3.12
  - kiln-hello >=2
  - pip
  - pip:
    - six==1.16.0
"""


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("channels")
    noarch = root / CHANNEL / "noarch"
    conda_package(noarch, "kiln-dep", "1.0", {"share/kiln-dep/data.txt": (b"from kiln-dep\n", 0o644)})
    conda_package(noarch, "kiln-hello", "2.1", {"bin/kiln-hello": (HELLO, 0o755)}, depends=["kiln-dep >=1"])
    conda_package(noarch, "kiln-hello", "1.0", {"bin/kiln-hello": (b"#!/bin/sh\necho too old\n", 0o755)})
    python_package(root / CHANNEL / "linux-64", (ROOT / ".state" / "base-image").read_text().strip())
    with serve_channels(root) as served:
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def conda_builder(builder: BuildHarness, channel: Served) -> AsyncIterator[BuildHarness]:
    await index_channel(channel.root / CHANNEL)
    await builder.stop_builders()
    await builder.start_builder(conda_channel_alias=channel.alias, conda_channels=[])
    yield builder
    await builder.stop_builders()
    await builder.start_builder()


async def test_conda_packages_and_their_dependencies_land_in_the_image_and_on_the_terminals_path(
        conda_builder: BuildHarness) -> None:
    url, ref = conda_builder.serve_repo("conda", {"environment.yml": ENVIRONMENT, "index.ipynb": "{}"})
    rid, image = await conda_builder.request(url, ref)
    outcome = await conda_builder.outcome(rid)
    assert outcome.phase is Phase.BUILT, f"{outcome.message}\n{conda_builder.log(rid)[-3000:]}"
    log = conda_builder.log(rid)
    assert "kiln-hello 2.1" in log and "kiln-dep 1.0" in log, "the solver's choice is in the log"
    assert f"python {CONDA_PYTHON}" in log and "Python from conda (python >=3.12)" in log
    # A login shell, as JupyterLab's terminal: the conda environment first on PATH, its Python with
    # pip's package, and the conda-only package.
    check = ("command -v kiln-hello; kiln-hello; command -v python; "
             "python -c 'import platform, six; print(platform.python_version(), six.__version__)'")
    expected = (f"/srv/conda/envs/notebook/bin/kiln-hello\nhello from conda\nfrom kiln-dep\n"
                f"/srv/conda/envs/notebook/bin/python\n{CONDA_PYTHON} 1.16.0")
    assert run_in(image, check, login=True) == expected
    assert run_in(image, check) == expected  # and `docker run IMAGE ...`
    assert run_in(image, "ls /srv/conda/envs/notebook/conda-meta | sort") == \
        f"history\nkiln-dep-1.0-0.json\nkiln-hello-2.1-0.json\npython-{CONDA_PYTHON}-0_kiln.json"
    # The notebook's kernel is conda's Python, with the environment's packages.
    jupyter_answers(image, kernel=("python3", "import sys, six; print(sys.executable, six.__version__)",
                                   "/srv/conda/envs/notebook/bin/python 1.16.0\n"))


async def test_a_package_the_channels_lack_fails_naming_it(conda_builder: BuildHarness) -> None:
    broken = ENVIRONMENT.replace("  - kiln-hello >=2\n", "  - kiln-hello >=2\n  - kiln-no-such-package\n")
    url, ref = conda_builder.serve_repo("conda-missing", {"environment.yml": broken})
    rid, _ = await conda_builder.request(url, ref)
    outcome = await conda_builder.outcome(rid)
    assert (outcome.phase, outcome.failure_cause) == (Phase.FAILED, "conda_package"), outcome.message
    assert "kiln-no-such-package" in outcome.message and "Traceback" not in outcome.message


async def test_the_environment_image_is_shared_by_repositories_with_the_same_environment(
        conda_builder: BuildHarness) -> None:
    url, ref = conda_builder.serve_repo("conda-again", {"environment.yml": ENVIRONMENT, "other.ipynb": "{}"})
    rid, image = await conda_builder.request(url, ref)
    assert (await conda_builder.outcome(rid)).phase is Phase.BUILT
    assert "reusing the environment image" in conda_builder.log(rid)
    assert run_in(image, "kiln-hello", login=True) == "hello from conda\nfrom kiln-dep"
