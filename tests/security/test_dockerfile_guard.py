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


# -- characters Python and Docker read differently ------------------------------------------------
# str.splitlines() ends a line at each of these; Docker ends lines at \n only and reads \v \f \r as
# spaces, so "ADD\x0chttp://..." was one ADD to the engine and two harmless lines to the old guard.
HIDDEN = ["\x0b", "\x0c", "\r", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00", "\x7f", "\u00a0", "\u3000"]


@pytest.mark.parametrize("char", HIDDEN, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("template", [
    "ADD{c}http://127.0.0.1:9102/metrics /tmp/m",  # the engine fetched the builder's metrics
    "FROM{c}127.0.0.1:8081/x",  # the private-registry check was skipped
    "ADD x{c}http://127.0.0.1:9102/ /d/",
    "RUN echo{c}hi",  # anywhere, even where it would be harmless
])
async def test_control_characters_and_unusual_spaces_are_refused(char: str, template: str) -> None:
    with pytest.raises(DockerfileRefused) as refused:
        await check_dockerfile(BASE + template.format(c=char) + "\n", KILN)
    message = str(refused.value)
    assert message.startswith("Dockerfile line 2 contains") and f"U+{ord(char):04X}" in message
    assert "127.0.0.1:9102" not in message and "echo" not in message and char not in message  # never the content
    # Positive control: the same line with a plain space is read as one instruction; a harmless one passes.
    clean = template.format(c=" ")
    found = instructions(BASE + clean + "\n")
    assert len(found) == 2 and found[1].keyword == clean.split()[0]
    if clean.startswith("RUN"):
        assert await check_dockerfile(BASE + clean + "\n", KILN) == [KILN[0] + "/kiln/base:latest"]
    else:
        with pytest.raises(DockerfileRefused, match="line 2: (ADD from a URL|the image 127.0.0.1:8081/x comes from a registry on a private)"):
            await check_dockerfile(BASE + clean + "\n", KILN)


async def test_windows_line_ends_and_tabs_are_fine() -> None:
    """Positive control: \\r before \\n and tabs are what Dockerfiles have; non-ASCII text too."""
    text = BASE.replace("\n", "\r\n") + "RUN\techo caf\u00e9 \\\r\n  && echo \u2615\r\nLABEL x=\"\u00e9\"\r\n"
    assert await check_dockerfile(text, KILN) == [KILN[0] + "/kiln/base:latest"]
    assert [i.keyword for i in instructions(text)] == ["FROM", "RUN", "LABEL"]


@pytest.mark.parametrize(("refused", "accepted"), [
    # Docker's lexer removes the escape character (and quotes) from an image name before pulling;
    # shlex kept the backtick, the name did not resolve, and the engine pulled from loopback.
    ("# escape=`\nFROM 127.0.0`.1:8081/x\n", "# escape=`\nFROM 1.1.1`.1:5000/public/x\n"),
    ("FROM 127.0.0\\.1:8081/x\n", "FROM 1.1.1\\.1:5000/public/x\n"),
    ('FROM "127.0.0.1:8081/x"\n', 'FROM "1.1.1.1:5000/public/x"\n'),
    ("FROM '127.0.0.1:8081/x'\n", "FROM '1.1.1.1:5000/public/x'\n"),
    (BASE + 'COPY --from="127.0.0.1:8081/x" /a /b\n', BASE + 'COPY --from="1.1.1.1:5000/public/x" /a /b\n'),
    (BASE + "RUN --mount=type=bind,from=127.0.0.1:8081/x,target=/x true\n",
     BASE + "RUN --mount=type=bind,from=1.1.1.1:5000/public/x,target=/x true\n"),
    # distribution/reference takes an upper-case first component for a host, as it does localhost.
    ("FROM LOCALHOST:8081/x\n", "FROM 1.1.1.1:5000/public/x\n"),
])
async def test_image_names_are_read_after_docker_removes_escapes_and_quotes(refused: str, accepted: str) -> None:
    with pytest.raises(DockerfileRefused, match="comes from a registry on a private or local address"):
        await check_dockerfile(refused, KILN)
    assert "1.1.1.1:5000/public/x" in await check_dockerfile(accepted, KILN)


async def test_the_escape_directive_escapes_in_add_too() -> None:
    with pytest.raises(DockerfileRefused, match="line 3: ADD from a URL"):
        await check_dockerfile("# escape=`\n" + BASE + "ADD http:`//127.0.0.1:8081/ /x\n", KILN)
    assert await check_dockerfile("# escape=`\n" + BASE + "ADD a`b /x\n", KILN)  # control: a local file


async def test_directives_stop_at_the_first_line_that_is_not_one() -> None:
    """Docker stops reading directives at an unknown one: the escape below it is a comment, so the
    backslash still joins the ADD to its URL."""
    text = "# foo=bar\n# escape=`\n" + BASE + "ADD \\\nhttp://127.0.0.1:8081/ /x\n"
    with pytest.raises(DockerfileRefused, match="line 4: ADD from a URL"):
        await check_dockerfile(text, KILN)
    assert [i.keyword for i in instructions(text)] == ["FROM", "ADD"]
    # Control: the escape directive first is honoured, and the backslash joins nothing.
    assert [i.keyword for i in instructions("# escape=`\n" + BASE + "RUN a \\\nRUN b\n")] == ["FROM", "RUN", "RUN"]


@pytest.mark.parametrize("name", ["127.0.0.1:8081/X", "127.0.0.1:8081//x", "-x", "x:tag:tag", '"a b"', "a@sha256:12"])
async def test_image_names_must_match_the_reference_grammar(name: str) -> None:
    with pytest.raises(DockerfileRefused, match="line 1: an image name (is not a valid image reference|has an unclosed)"):
        await check_dockerfile(f"FROM {name}\n", KILN)
    assert await check_dockerfile("FROM python:3.11-slim@sha256:" + "a" * 64 + "\n", KILN)  # control


async def test_a_registry_that_does_not_resolve_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: the engine resolves the name again on the host, which may know it (no DNS is asked here)."""
    from kiln_builder import dockerfile_guard
    from kilnbus.urlguard import UnsafeRepoURL

    async def unresolvable(host: str, allowed: list[str]) -> None:
        raise UnsafeRepoURL("does not resolve", "provider_unreachable", 404)

    monkeypatch.setattr(dockerfile_guard, "check_public_host", unresolvable)
    for image in ("registry.example.invalid/x", "Kafka/x"):
        with pytest.raises(DockerfileRefused, match="does not resolve to an address here"):
            await check_dockerfile(f"FROM {image}\n", KILN)
    assert await check_dockerfile("FROM kafka/x\n", KILN) == ["kafka/x"]  # control: Docker Hub, nothing to resolve


@pytest.mark.parametrize(("refused", "accepted"), [
    ("# syntax=127.0.0.1:5000/evil/frontend\n", "# syntax=docker/dockerfile:1\n"),
    ("// syntax=example.org/frontend\n", "#syntax = docker.io/docker/dockerfile:1.7\n"),
    ("#!/usr/bin/env docker\n# syntax=example.org/frontend\n", "#!/usr/bin/env docker\n# syntax=docker/dockerfile:1\n"),
])
async def test_only_dockers_own_frontend_may_read_the_dockerfile(refused: str, accepted: str) -> None:
    with pytest.raises(DockerfileRefused, match="line (1|2): a syntax directive"):
        await check_dockerfile(refused + BASE, KILN)
    assert await check_dockerfile(accepted + BASE, KILN)


@pytest.mark.parametrize("body", [
    "RUN <<'EOF\\'\necho hi\nEOF\\\n",  # a terminator ending in the escape character
    "RUN <<'#x'\necho \\\n#x\n",  # a terminator that looks like a comment, after a continued line
])
async def test_heredocs_are_read_both_ways(body: str) -> None:
    """BuildKit ends a heredoc at its terminator; the classic builder knows no heredocs. Each reading
    is checked, so the ADD after the heredoc cannot hide in one of them."""
    with pytest.raises(DockerfileRefused, match="ADD from a URL"):
        await check_dockerfile(BASE + body + "ADD http://127.0.0.1:8081/ /x\n", KILN)
    assert await check_dockerfile(BASE + body + "ADD local.txt /x\n", KILN)  # control


async def test_git_sources_of_add_are_refused() -> None:
    with pytest.raises(DockerfileRefused, match="ADD from a URL"):
        await check_dockerfile(BASE + "ADD deploy@127.0.0.1:repo /r\n", KILN)
    assert await check_dockerfile(BASE + "ADD logo@2x.png /r\n", KILN)  # control


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
