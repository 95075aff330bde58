"""The README's newcomer path, as a test: its two commands, then a launch of the sample repository
that `make up` names.

CI runs this suite from a fresh clone through `.ci/run` (= `make test`, which brings the stack up
as `make up` does), so there it is the whole path a newcomer takes on a new machine. Here it checks
that the README still says what `make up` and `.ci/run` do, that `make up` on a running stack is a
quick no-op that prints the address and the sample link, and that the link launches the sample.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .test_binder import launch, server_answers

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make up", "make test"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert any(line.endswith("make test") for line in ci), ci


async def test_make_up_names_a_sample_that_launches() -> None:
    up = subprocess.run(["make", "up"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    gateway = re.search(r"Open (http://\S+?/) and launch", up.stdout)
    sample = re.search(r"^\s+(http://\S+/v2/\S+)$", up.stdout, re.MULTILINE)
    assert gateway and sample, up.stdout
    assert httpx.get(gateway.group(1), timeout=10).status_code == 200
    # The link opens the loading page; the page follows the same launch through the event stream.
    page = httpx.get(sample.group(1), timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    path = urlsplit(sample.group(1)).path
    provider, spec = re.match(r"/v2/([^/]+)/(.+)", path).groups()  # type: ignore[union-attr]
    assert provider == "git"
    events = await launch(spec)
    ready = events[-1]
    assert ready["phase"] == "ready", events[-3:]
    server_answers(ready)
    contents = httpx.get(ready["url"] + "api/contents", headers={"Authorization": f"token {ready['token']}"}, timeout=10)
    assert "index.ipynb" in {item["name"] for item in contents.json()["content"]}, "the README's sample notebook"
