"""Data repositories: resolving and fetching a 10 MB record, against a plain download of the same bytes.

For each provider Kiln launches data from (Zenodo, Figshare, Dataverse, HydroShare, CKAN, Software
Heritage, and ``doi`` in front of Zenodo), a record of 10 MB is served by the stand-ins for the real APIs on loopback
(tests/support/datahost.py): one zip archive of incompressible files (so the archive is 10 MB on
the wire) for Zenodo and Figshare, which unpack it, a BagIt zip of them for HydroShare (unpacked,
its ``data/contents`` kept), and the same files one by one for Dataverse and CKAN. Software
Heritage (``swh``) serves them as a revision's directory, its vault bundle a tar.gz already cooked
(a cold cooking is the archive's time, not Kiln's); its baseline is a plain GET of that tar.gz.
Rows: the resolver's provider resolving the spec (DOI redirects and API calls), the builder's
``DataFetcher`` fetching and unpacking the record, and the baseline, a plain HTTP GET of the same
10 MB from the same stand-in with httpx, written to disk. Median of ``--runs`` runs each.

No Kafka, Docker or network beyond 127.0.0.1; run it on an otherwise idle machine:

    python bench/data_providers.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from urllib.parse import quote

import httpx

from kiln_builder.datafetch import DataFetcher
from kiln_builder.fetch import FetchPolicy
from kiln_builder.swhvault import SwhVault
from kiln_resolver.providers import make_providers
from kiln_resolver.settings import Settings
from tests.support.datahost import DataHost, make_zip, start_datahost

MB = 10 * 2**20


def record_files(count: int = 10) -> dict[str, bytes]:
    """10 MB in ``count`` files of random bytes (incompressible: the zip is as large as its contents)."""
    return {f"record/data-{i}.bin": os.urandom(MB // count) for i in range(count)} | {"record/requirements.txt": b"numpy\n"}


async def timed(call: Callable[[], Awaitable[object]], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def plain_get(url: str, scratch: Path, runs: int) -> float:
    """The baseline: median seconds of a plain httpx GET of ``url`` streamed to a file in ``scratch``."""
    async def once() -> None:
        async with httpx.AsyncClient() as client, client.stream("GET", url) as r:
            with open(scratch / "plain.download", "wb") as out:
                async for chunk in r.aiter_bytes(1 << 16):
                    out.write(chunk)
        (scratch / "plain.download").unlink()

    return await timed(once, runs)


def print_header(title: str, baseline: float) -> None:
    print(title)
    print(f"{'provider':<10} {'resolve ms':>11} {'fetch ms':>9} {'total ms':>9} {'vs plain GET':>13}")
    print(f"{'plain GET':<10} {'':>11} {baseline * 1000:>9.1f} {baseline * 1000:>9.1f} {'1.00x':>13}")


def print_row(name: str, resolve_s: float, fetch_s: float, baseline: float) -> None:
    total = resolve_s + fetch_s
    print(f"{name:<10} {resolve_s * 1000:>11.1f} {fetch_s * 1000:>9.1f} {total * 1000:>9.1f} {total / baseline:>12.2f}x")


async def main(runs: int) -> None:
    host: DataHost = start_datahost()
    files = record_files()
    archive = make_zip(files)
    doi_zenodo = host.add_zenodo("1001", {"record.zip": archive})
    doi_figshare = host.add_figshare("2002", {1: {"record.zip": archive}})
    doi_dataverse = host.add_dataverse("10.7910/DVN/BENCH", {(1, 0): files})
    hydroshare = "b" * 32
    host.add_hydroshare(hydroshare, {name.removeprefix("record/"): data for name, data in files.items()})
    ckan = host.add_ckan("bench", {name.removeprefix("record/"): data for name, data in files.items()})
    host.raw["plain.zip"] = archive
    swh_rev = host.add_swh_revision(host.add_swh_directory({name.removeprefix("record/"): data
                                                             for name, data in files.items()}))
    settings = Settings(doi_resolver_url=host.base("doi"), zenodo_url=host.base("zenodo"),
                        figshare_url=host.base("figshare"), figshare_api_url=host.base("figshare-api") + "/v2",
                        dataverse_urls=[host.base("dataverse")], hydroshare_url=host.base("hydroshare"), swh_url=host.base("swh"),
                        allowed_private_hosts=["127.0.0.1"])
    providers = make_providers(settings)
    policy = FetchPolicy(max_bytes=2**30, max_entries=100_000, max_fetch_bytes=2**30, allowed_private_hosts=["127.0.0.1"])
    fetcher = DataFetcher(policy, swh=SwhVault(host.base("swh")))

    async def quiet(line: str) -> None:
        pass

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)

        baseline = await plain_get(f"{host.url}/raw/plain.zip", work, runs)
        swh_tarball = next(name for name in host.raw if name.startswith("swh-"))
        baselines = {"swh": await plain_get(f"{host.url}/raw/{swh_tarball}", work, runs)}
        print_header(f"10 MB record, median of {runs} runs, stand-ins on loopback", baseline)
        print(f"{'(tar.gz)':<10} {'':>11} {baselines['swh'] * 1000:>9.1f} {baselines['swh'] * 1000:>9.1f} {'1.00x':>13}")
        for name, spec in (("zenodo", doi_zenodo), ("figshare", f"{doi_figshare}.v1"), ("dataverse", doi_dataverse),
                           ("hydroshare", hydroshare), ("ckan", quote(ckan, safe="")), ("swh", f"swh:1:rev:{swh_rev}"),
                           ("doi", doi_zenodo)):
            resolution = await providers[name].resolve(spec)
            resolve_s = await timed(lambda n=name, s=spec: providers[n].resolve(s), runs)

            async def fetch(url: str = resolution.repo_url, ref: str = resolution.ref,
                            content: str = resolution.content) -> None:
                await fetcher.fetch(url, ref, work / "checkout", quiet, content)

            print_row(name, resolve_s, await timed(fetch, runs), baselines.get(name, baseline))
    await providers.aclose()
    host.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
