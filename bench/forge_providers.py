"""Forges: resolving a ref and fetching a 10 MB repository, against a plain download of the same bytes.

For each git provider (GitHub, GitLab, Codeberg/Gitea, Bitbucket and plain ``git`` URLs) a
repository holding 10 MB of incompressible files in one commit is served by the loopback git host
(tests/support/githost.py: real git over smart HTTP, and stand-ins for each forge's REST API, since
no forge can be reached from here). Rows: the resolver's provider resolving ``main`` (its API calls,
or ``git ls-remote``), the builder's ``GitFetcher`` fetching it cold (a new mirror: clone, archive,
the checkout's ``.git``), and the baseline, a plain HTTP GET of the same 10 MB (one file) from the
same server with httpx, written to disk. Median of ``--runs`` runs each.

No Kafka, Docker or network beyond 127.0.0.1; run it on an otherwise idle machine:

    python bench/forge_providers.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from kiln_builder.fetch import FetchPolicy, GitFetcher
from kiln_resolver.providers import make_providers
from kiln_resolver.settings import Settings
from tests.support.githost import GitHost, git, make_repo, start_githost

MB = 10 * 2**20


async def timed(call: Callable[[], Awaitable[object]], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "repos" / ".raw").mkdir(parents=True)
        files = {f"data/part-{i}.bin": os.urandom(MB // 10) for i in range(10)}
        (work / "repos" / ".raw" / "plain.bin").write_bytes(b"".join(files.values()))
        for where in ("lab/data", "gitlab/lab/data", "gitea/lab/data", "bitbucket/lab/data"):
            repo = make_repo(work / "repos", where, {"README.md": "bench\n"})
            for name, data in files.items():
                (repo / name).parent.mkdir(parents=True, exist_ok=True)
                (repo / name).write_bytes(data)
            git(repo, "add", "-A")
            git(repo, "commit", "-qm", "10 MB of data")
        host: GitHost = start_githost(work / "repos")
        settings = Settings(github_url=host.url, github_api_url=host.github_api, gitlab_url=host.gitlab,
                            gitea_url=host.gitea, bitbucket_url=host.bitbucket, bitbucket_api_url=host.bitbucket_api,
                            allowed_private_hosts=["127.0.0.1"])
        providers = make_providers(settings)
        policy = FetchPolicy(max_bytes=2**30, max_entries=100_000, max_fetch_bytes=2**30,
                             allowed_private_hosts=["127.0.0.1"])

        async def quiet(line: str) -> None:
            pass

        async def plain() -> None:
            async with httpx.AsyncClient() as client, client.stream("GET", f"{host.url}/raw/plain.bin") as r:
                with open(work / "plain.bin", "wb") as out:
                    async for chunk in r.aiter_bytes(1 << 16):
                        out.write(chunk)
            (work / "plain.bin").unlink()

        baseline = await timed(plain, runs)
        print(f"10 MB repository (one commit), median of {runs} runs, git host and API stand-ins on loopback")
        print(f"{'provider':<10} {'resolve ms':>11} {'fetch ms':>9} {'total ms':>9} {'vs plain GET':>13}")
        print(f"{'plain GET':<10} {'':>11} {baseline * 1000:>9.1f} {baseline * 1000:>9.1f} {'1.00x':>13}")
        specs = {"gh": "lab/data/main", "gl": f"{quote('lab/data', safe='')}/main", "gitea": "lab/data/main",
                 "bb": "lab/data/main", "git": f"{quote(host.url + '/lab/data', safe='')}/main"}
        for name, spec in specs.items():
            resolution = await providers[name].resolve(spec)
            resolve_s = await timed(lambda n=name, s=spec: providers[n].resolve(s), runs)

            async def fetch(url: str = resolution.repo_url, ref: str = resolution.ref) -> None:
                shutil.rmtree(work / "cache", ignore_errors=True)  # cold: a repository the builder never saw
                await GitFetcher(policy, work / "cache").fetch(url, ref, work / "checkout", quiet)

            fetch_s = await timed(fetch, runs)
            total = resolve_s + fetch_s
            print(f"{name:<10} {resolve_s * 1000:>11.1f} {fetch_s * 1000:>9.1f} {total * 1000:>9.1f} "
                  f"{total / baseline:>12.2f}x")
        await providers.aclose()
        host.server.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
