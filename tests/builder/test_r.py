"""R environments built for real: R from Debian's packages (r-base-core, IRkernel, r-cran-*), CRAN
packages from a CRAN-like repository this module makes (tests/support/cranrepo.py; CRAN and its
snapshots cannot be reached from here), served on the build network's package-mirror port, the one
place on the host a build may reach. The builder is told to install CRAN packages from there."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from kilnbus import Phase

from ..support.condachannel import Served, serve_channels
from ..support.cranrepo import r_source_package
from .conftest import BuildHarness, free_port, jupyter_answers, run_in

pytestmark = [pytest.mark.docker, pytest.mark.kafka, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

# A repository that is itself an R package (root DESCRIPTION) importing a CRAN package its install.R
# installs, with runtime.txt asking for R 4.2 and a snapshot date: repo2docker's three R files at once.
R_REPO = {
    "runtime.txt": "r-4.2-2024-06-01\n",
    "install.R": 'install.packages("kilnhello")\n',
    "DESCRIPTION": ("Package: analysis\nVersion: 0.1\nTitle: An Analysis\nDescription: A repository that is an R "
                    "package.\nLicense: MIT + file LICENSE\nAuthors@R: person('A', 'User', email = 'a@b.invalid', "
                    "role = c('aut', 'cre'))\nImports: kilnhello\nEncoding: UTF-8\n"),
    "LICENSE": "YEAR: 2026\nCOPYRIGHT HOLDER: A User\n",
    "NAMESPACE": "export(shout)\nimportFrom(kilnhello, hello)\n",
    "R/shout.R": "shout <- function() toupper(kilnhello::hello())\n",
    "index.ipynb": "{}",
}


@pytest.fixture(scope="module")
def cran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("mirror")
    r_source_package(root / "cran" / "src" / "contrib", "kilnhello", "1.0",
                     "hello <- function() 'hello from a CRAN-like repository'\n", ["hello"])
    with serve_channels(root) as served:
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def r_builder(builder: BuildHarness, cran: Served) -> AsyncIterator[BuildHarness]:
    await builder.stop_builders()
    await builder.start_builder(r_cran_url=f"{cran.alias}/cran")
    yield builder
    await builder.stop_builders()
    await builder.start_builder()


async def test_install_r_description_and_runtime_give_r_with_its_kernel_and_packages(r_builder: BuildHarness,
                                                                                      cran: Served) -> None:
    url, ref = r_builder.serve_repo("r", R_REPO)
    rid, image = await r_builder.request(url, ref)
    outcome = await r_builder.outcome(rid, timeout=900)
    assert outcome.phase is Phase.BUILT, f"{outcome.message}\n{r_builder.log(rid)[-3000:]}"
    # In a login shell, as JupyterLab's terminal: Debian's R 4.2, the CRAN package install.R installed,
    # and the repository itself installed as a package (DESCRIPTION) on top of it.
    check = ("R --version | head -n1 | cut -d' ' -f1-3; Rscript -e 'cat(kilnhello::hello(), analysis::shout(), sep = \"\\n\")'; "
             "Rscript -e 'cat(.libPaths()[1], getOption(\"repos\")[[\"CRAN\"]], sep = \"\\n\")'")
    printed = run_in(image, check, login=True).splitlines()
    assert printed[0] == "R version 4.2.2", printed
    assert printed[1:3] == ["hello from a CRAN-like repository", "HELLO FROM A CRAN-LIKE REPOSITORY"], printed
    assert printed[3:] == ["/srv/rlibs", f"{cran.alias}/cran"], printed
    # The R kernel is registered beside Python's, where the server's Jupyter looks.
    kernels = run_in(image, "jupyter kernelspec list --json")
    assert '"ir"' in kernels and '"python3"' in kernels, kernels
    # ... and a notebook's R kernel runs R there, with the packages.
    jupyter_answers(image, kernel=("ir", "cat(analysis::shout())", "HELLO FROM A CRAN-LIKE REPOSITORY"))


def shiny_app_answers_through_the_servers_proxy(server: str, container: str) -> None:
    """Start the repository's Shiny app in the running server's container, as a user does from its
    terminal, and fetch it through jupyter-server-proxy's ``/proxy/<port>/`` with the server's token."""
    port = free_port()
    subprocess.run(["docker", "exec", "-d", container, "R", "--quiet", "-e",
                    f"shiny::runApp('hello', port = {port}, launch.browser = FALSE)"], check=True, timeout=30)
    deadline, last = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        r = httpx.get(f"{server}/proxy/{port}/", headers={"Authorization": "token probe"}, timeout=10)
        if r.status_code == 200 and "Kiln in Shiny" in r.text:
            assert httpx.get(f"{server}/proxy/{port}/", timeout=10).status_code in (302, 403), "the token is needed"
            return
        last = f"{r.status_code} {r.text[:300]}"
        time.sleep(0.5)
    raise AssertionError(f"the Shiny app did not answer through the proxy: {last}")


async def test_r_packages_in_environment_yml_come_from_debian_and_shiny_is_served(r_builder: BuildHarness) -> None:
    url, ref = r_builder.serve_repo("r-env", {
        "environment.yml": "dependencies:\n  - r-base\n  - r-jsonlite\n  - r-shiny\n",
        "hello/app.R": "library(shiny)\nshinyApp(fluidPage(h1('Kiln in Shiny')), function(input, output) {})\n"})
    rid, image = await r_builder.request(url, ref)
    outcome = await r_builder.outcome(rid, timeout=900)
    assert outcome.phase is Phase.BUILT, f"{outcome.message}\n{r_builder.log(rid)[-3000:]}"
    assert run_in(image, "Rscript -e 'cat(as.character(jsonlite::toJSON(list(a = 1))))'", login=True) == '{"a":[1]}'
    assert run_in(image, "dpkg-query -W -f '${Status}' r-cran-jsonlite") == "install ok installed"
    # Shiny (Debian's r-cran-shiny) through the server's jupyter-server-proxy: no shiny-server, which
    # Debian does not package, so /shiny/ is not offered; /proxy/<port>/ is.
    jupyter_answers(image, then=shiny_app_answers_through_the_servers_proxy)


async def test_an_r_version_not_offered_fails_naming_the_offered_ones(r_builder: BuildHarness) -> None:
    url, ref = r_builder.serve_repo("r-old", {"runtime.txt": "r-3.6-2020-01-01\n"})
    rid, _ = await r_builder.request(url, ref)
    outcome = await r_builder.outcome(rid)
    assert outcome.phase is Phase.FAILED
    assert "asks for R 3.6; this Binder offers R 4.2, 4.5" in outcome.message, outcome.message
