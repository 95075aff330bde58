"""repo2docker's build rules, one small repository each (tests/builder/repos/), built for real.

Each repository is served by the loopback git host and built by the builder service through
Kafka on the real Docker engine; pip installs come from PyPI and apt packages from Debian, trusted
through the base image's extra CA certificates. Every image that builds is started to check that
its Jupyter server answers.
"""

from __future__ import annotations

import pytest

from kilnbus import Phase

from ..bus.helpers import wait_until
from .conftest import BuildHarness, jupyter_answers, labels, run_in

pytestmark = [pytest.mark.docker, pytest.mark.kafka, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

BUILDS = {
    # repository: (a shell check inside the image, its expected output)
    "requirements": ("python -c 'import six; print(six.__version__)'; ls ~/index.ipynb", "1.16.0\n/home/jovyan/index.ipynb"),
    "dockerfile": ("cat /etc/kiln-dockerfile-marker", "built from the repository's Dockerfile for jovyan"),
    "setup_py": ("cd /tmp && python -c 'import mypkg; print(mypkg.VALUE)'", "installed from setup.py"),
    "pyproject": ("cd /tmp && python -c 'import kilnproj; print(kilnproj.VALUE)'", "installed from pyproject.toml"),
    "pipfile": ("python -c 'import six; print(six.__version__)'", "1.16.0"),
    "environment_yml": ("python -c 'import six, sys; print(six.__version__, sys.version_info[:2])'", "1.16.0 (3, 11)"),
    # runtime.txt's Python from the base image of the Debian suite that carries it.
    "runtime_313": ("python -c 'import six, sys; print(six.__version__, sys.version_info[:2])'", "1.16.0 (3, 13)"),
    "apt": ("echo '{\"a\": 1}' | jq .a", "1"),
    "postbuild": ("cat ~/postbuild-ran", "postBuild ran as jovyan"),
    "start": ("echo started=$KILN_STARTED", "started=yes"),
    "binder_dir": ("python -c 'import six; print(six.__version__)'", "1.16.0"),
    "none": ("whoami; python -c 'import jupyterlab; print(\"lab\")'; ls -A ~ | grep -c kiln || true", "jovyan\nlab\n0"),
}


@pytest.mark.parametrize("repo", list(BUILDS))
async def test_repository_builds_and_its_server_answers(builder: BuildHarness, repo: str) -> None:
    url, ref = builder.serve_repo(repo)
    rid, image = await builder.request(url, ref)
    outcome = await builder.outcome(rid)
    assert outcome.phase is Phase.BUILT, f"{outcome.message}\n{builder.log(rid)[-3000:]}"
    assert outcome.image_name == image
    phases = [e.phase for e in builder.phases[rid]]
    assert phases[0] is Phase.WAITING and Phase.FETCHING in phases and Phase.BUILDING in phases and Phase.PUSHING in phases
    # The launch request follows the built event on another topic.
    await wait_until(lambda: any(launch.request_id == rid for launch in builder.launches), 10, "the hub launch request")
    assert [launch.request_id for launch in builder.launches if launch.request_id == rid] == [rid]
    command, expected = BUILDS[repo]
    assert run_in(image, command) == expected
    if repo != "dockerfile":  # the repository's own image: its shells are its business
        # A login shell (JupyterLab's terminal is one) starts from /etc/profile's PATH: the
        # environment must still come first, with its packages.
        assert run_in(image, command, login=True) == expected, "the environment is lost in a login shell"
        assert run_in(image, "command -v python pip jupyter", login=True).split() == [
            "/srv/venv/bin/python", "/srv/venv/bin/pip", "/srv/venv/bin/jupyter"]
    assert run_in(image, "id -u") == "1000"
    if repo != "dockerfile":
        assert labels(image)["repo2docker.repo"] == url and labels(image)["repo2docker.ref"] == ref
        # The home folder is the repository, as repo2docker leaves it: git log and git pull work there.
        assert run_in(image, "cd ~ && git rev-parse HEAD && git remote get-url origin") == f"{ref}\n{url}"
    jupyter_answers(image)


# Environments refused while planning, before any build, are tested in memory (test_builder_service.py).
FAILURES = {
    "apt_bad": ("apt_package", "apt.txt names no-such-package-for-kiln-tests, which is not a Debian package"),
    "pip_missing": ("pip_requirement", "pip could not install no-such-package-for-kiln-tests-xyz==1.0"),
    "postbuild_fail": ("postbuild_failed", "postBuild failed with exit code 3"),
}


@pytest.mark.parametrize("repo", list(FAILURES))
async def test_failures_a_user_can_act_on(builder: BuildHarness, repo: str) -> None:
    url, ref = builder.serve_repo(repo)
    rid, _ = await builder.request(url, ref)
    outcome = await builder.outcome(rid)
    cause, text = FAILURES[repo]
    assert outcome.phase is Phase.FAILED
    assert text in outcome.message, outcome.message
    assert outcome.failure_cause == cause
    assert not [launch for launch in builder.launches if launch.request_id == rid]
