"""A repository's Dockerfile cannot make the Docker engine fetch on Kiln's own network.

RUN steps run on the build network; ADD from a URL, FROM/COPY --from an image on a private registry
and ONBUILD triggers are carried out by the engine on the host's network instead, so the builder
refuses them before the build (kiln_builder.dockerfile_guard). The checks of the text need no
infrastructure (they parse the Dockerfile and look addresses up without sending anything); the
engine is asked for a base image's ONBUILD triggers.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln_builder.dockerfile_guard import DockerfileRefused, check_dockerfile, instructions
from kiln_builder.executor import DockerExecutor

ROOT = Path(__file__).resolve().parents[2]

KILN = ["127.0.0.1:5000"]
BASE = "FROM 127.0.0.1:5000/kiln/base:latest\n"


@pytest.mark.parametrize("line", [
    "ADD http://127.0.0.1:8590/metrics /tmp/m",
    "ADD http://169.254.169.254/latest/meta-data/ /tmp/c",
    "add HTTPS://example.org/x /x",
    'ADD ["http://127.0.0.1:9092/", "/tmp/k"]',
    "ADD --chown=1000:1000 http://10.0.0.1/x /x",
    "ADD $SECRET_URL /x",
    "ADD ${URL} /x",
    "ADD \\\n  http://127.0.0.1:5001/token /t",
    "ADD git@github.com:o/r.git /r",
    "ONBUILD ADD http://169.254.169.254/ /c",
    "ONBUILD RUN true",
    "FROM 127.0.0.1:8590/kiln/x",
    "FROM localhost:5000/x",
    "FROM 169.254.169.254/latest",
    "FROM 10.1.2.3:5000/x AS build",
    "FROM [::1]:5000/x",
    "COPY --from=192.168.1.1:5000/x /etc/passwd /p",
    "FROM $BASE_IMAGE",
    "ADD\thttp://127.0.0.1:8590/ /tmp/f",  # a tab ends the keyword too
    "ADD \\\n\n  http://127.0.0.1:8585/health /tmp/f2",  # an empty line inside a continuation
    "ADD \\\n# a comment\n  http://127.0.0.1:8585/health /tmp/f2",
    "ADD http:/\\\n/127.0.0.1:8590/ /tmp/f",  # Docker joins without a space
    'ADD "http://127.0.0.1:8590/" /tmp/f',
])
async def test_what_the_engine_would_fetch_on_kilns_network_is_refused(line: str) -> None:
    with pytest.raises(DockerfileRefused, match=r"Dockerfile line \d+"):
        await check_dockerfile(BASE + line + "\n", KILN)


async def test_the_escape_directive_is_read_as_docker_reads_it() -> None:
    text = "# escape=`\nFROM 127.0.0.1:5000/kiln/base:latest\nADD `\nhttp://127.0.0.1:8590/ /tmp/f\n"
    with pytest.raises(DockerfileRefused, match="line 3: ADD from a URL"):
        await check_dockerfile(text, KILN)
    with pytest.raises(DockerfileRefused, match="escape character"):
        await check_dockerfile("# escape=x\nFROM y\n", KILN)
    # Positive control: with the backtick as escape, a backslash ends no line (Windows-style paths).
    found = instructions("# escape=`\nFROM x\nRUN echo a\\\nADD b /c\n")
    assert [i.keyword for i in found] == ["FROM", "RUN", "ADD"]


async def test_ordinary_dockerfiles_pass() -> None:
    """Positive controls: what Binder Dockerfiles do (local files, public and Kiln images, stages)."""
    text = ("# a comment\nFROM 127.0.0.1:5000/kiln/base:latest AS env\nFROM python:3.11-slim\n"
            "FROM 1.1.1.1:5000/public/image:1\nADD requirements.txt /tmp/\nADD --chown=1000:1000 . /home/jovyan/\n"
            "COPY --from=env /etc/hostname /h\nADD --chown=${NB_UID} . ${HOME}\nRUN curl -fsSLO https://example.org/data.csv \\\n  && echo done\n")
    images = await check_dockerfile(text, KILN)
    assert images == ["127.0.0.1:5000/kiln/base:latest", "python:3.11-slim", "1.1.1.1:5000/public/image:1"]


def test_continuation_lines_are_one_instruction() -> None:
    found = instructions("FROM x\nRUN a \\\n  # between\n  b\nADD \\\n http://y /z\n")
    assert [(i.line, i.keyword) for i in found] == [(1, "FROM"), (2, "RUN"), (5, "ADD")]
    assert "http://y" in found[2].args


@pytest.fixture
def image_with_triggers() -> Iterator[str]:
    """A local image carrying an ONBUILD trigger, as someone's public base image might."""
    base = (ROOT / ".state" / "base-image").read_text().strip()
    name = f"kiln-security-onbuild-{uuid.uuid4().hex[:8]}:1"
    subprocess.run(["docker", "build", "-q", "-t", name, "-"], input=f"FROM {base}\nONBUILD RUN true\n",
                   text=True, check=True, capture_output=True, timeout=120)
    yield name
    subprocess.run(["docker", "rmi", "-f", name], capture_output=True, timeout=60)


@pytest.mark.docker
async def test_the_engine_reports_a_base_images_onbuild_triggers(image_with_triggers: str) -> None:
    executor = DockerExecutor()
    assert await executor.onbuild_triggers(image_with_triggers, kiln_registry=False) == ["RUN true"]
    # Control: the base image Kiln builds from has none.
    base = (ROOT / ".state" / "base-image").read_text().strip()
    assert await executor.onbuild_triggers(base, kiln_registry=True) == []
