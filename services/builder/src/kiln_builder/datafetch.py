"""Fetching a data repository's record (Zenodo, ...) into a checkout, under the rules git checkouts obey.

Every request (the record's API, each file, each redirect) goes through ``kilnbus.guardedhttp``:
the URL guard's rule, connections pinned to the addresses just checked. Downloads count against
``max_fetch_bytes``, files written against ``max_bytes`` and ``max_entries``, the whole fetch against
a deadline; names and archive members are checked by ``unpack``. Archives are unpacked as
repo2docker does (``datasources.Layout``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath

import httpx

from kiln_builder.datasources import LISTERS, Layout, Lister, Listing, RemoteFile, shown
from kiln_builder.errors import FetchFailed
from kiln_builder.executor import LineSink
from kiln_builder.fetch import Fetcher, FetchPolicy
from kiln_builder.swhvault import SwhVault
from kiln_builder.unpack import (
    Budget,
    create_file,
    extract_tar,
    extract_zip,
    hoist_named_folder,
    hoist_single_folder,
    is_zip,
    keep_folder,
    safe_name,
)
from kilnbus.guardedhttp import GuardedHTTP
from kilnbus.urlguard import UnsafeRepoURL


class DataFetcher:
    """``Fetcher`` for data repositories: ``content`` names the kind of record ``repo_url`` is."""

    def __init__(self, policy: FetchPolicy, timeout: float = 600, request_timeout: float = 60,
                 swh: SwhVault | None = None) -> None:
        self._policy = policy
        self._timeout = timeout
        self._request_timeout = request_timeout
        self._swh = swh or SwhVault()

    async def fetch(self, repo_url: str, ref: str, dest: Path, on_line: LineSink, content: str = "git") -> None:
        # The vault's cooking is waited for with progress lines, so its lister is the one that writes to the log.
        lister: Lister | None = functools.partial(self._swh.listing, on_line=on_line) if content == "swh" \
            else LISTERS.get(content)
        if lister is None:
            raise FetchFailed(f"Kiln does not know how to fetch {content!r} content.", "fetch_failed")
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        scratch = dest.with_name(f".{dest.name}-download-{uuid.uuid4().hex[:8]}")
        http = GuardedHTTP(self._policy.allowed_schemes, self._policy.allowed_private_hosts, self._request_timeout,
                           user_agent="Kiln (repo2docker-compatible)")
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    await on_line(f"Picked {content} content provider.\nFetching {shown(repo_url)} (version {ref})\n")
                    listing = await lister(http, repo_url)
                    await self._lay_out(http, listing, dest, scratch, Budget(self._policy), on_line)
            except TimeoutError:
                raise FetchFailed(f"Fetching the record took longer than {self._timeout:.0f} seconds.", "fetch_failed") from None
            except UnsafeRepoURL as exc:
                raise FetchFailed(str(exc), exc.cause) from None
            except httpx.HTTPError as exc:
                raise FetchFailed(f"The record's files could not be downloaded ({type(exc).__name__}).",
                                  "fetch_failed") from None
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)  # no half-fetched record is built
            raise
        finally:
            await http.aclose()
            shutil.rmtree(scratch, ignore_errors=True)

    async def _lay_out(self, http: GuardedHTTP, listing: Listing, dest: Path, scratch: Path, budget: Budget,
                       on_line: LineSink) -> None:
        files = listing.files
        if listing.layout is Layout.BAG:
            return await self._bag(http, listing, dest, scratch, budget, on_line)
        await on_line(f"{listing.title}: {len(files)} file{'s' if len(files) != 1 else ''}\n")
        if listing.layout is Layout.SINGLE_TARBALL:
            archive = await self._download_archive(http, files[0], scratch, budget, on_line)
            await on_line(f"Extracting {files[0].name}\n")
            await asyncio.to_thread(extract_tar, archive, dest, budget)
            hoist_named_folder(dest, listing.roots)
            return
        single_zip = len(files) == 1 and (listing.layout is Layout.SINGLE_ZIP or listing.layout is Layout.SINGLE_NAMED_ZIP
                                          and files[0].name.lower().endswith(".zip"))
        if single_zip:
            archive = await self._download_archive(http, files[0], scratch, budget, on_line)
            if is_zip(archive):
                await on_line(f"Extracting {files[0].name}\n")
                await asyncio.to_thread(extract_zip, archive, dest, budget)
                hoist_single_folder(dest)
                return
            name = safe_name(files[0].name)  # not a zip after all: the file itself is the record
            budget.entry()
            budget.write(archive.stat().st_size)
            fd = create_file(dest, name)
            os.close(fd)
            os.replace(archive, dest.joinpath(*name.parts))
            return
        for remote in files:
            safe_name(remote.name)  # every name checked before anything is downloaded
        for remote in files:
            budget.entry()
            await download(http, remote, dest, budget, on_line)
        if listing.layout is Layout.HOIST:
            hoist_single_folder(dest)

    @staticmethod
    async def _download_archive(http: GuardedHTTP, remote: RemoteFile, scratch: Path, budget: Budget,
                                on_line: LineSink) -> Path:
        """``remote`` into the scratch folder, counted as downloaded only: what it unpacks to is counted as written."""
        scratch.mkdir()
        archive = scratch / "archive"
        await download(http, remote, archive, budget, on_line, count_written=False)
        return archive

    async def _bag(self, http: GuardedHTTP, listing: Listing, dest: Path, scratch: Path, budget: Budget,
                   on_line: LineSink) -> None:
        """A BagIt zip that the repository may still be preparing: asked for again (waiting longer each
        time, within the fetch's deadline) until it is a zip; then its ``<id>/data/contents`` is the checkout."""
        bag = listing.files[0]
        scratch.mkdir()
        archive, wait = scratch / "bag.zip", 1.0
        await on_line(f"{listing.title}: its bag\n")
        while True:
            await download(http, bag, archive, Budget(self._policy), on_line, count_written=False)
            if is_zip(archive):
                break
            archive.unlink()
            await on_line(f"The bag is being prepared; asking again in {wait:.0f} s\n")
            await asyncio.sleep(wait)  # bounded by the fetch's deadline (``fetch``)
            wait = min(wait * 2, 10.0)
        budget.fetch(archive.stat().st_size)
        await on_line(f"Extracting {bag.name}\n")
        await asyncio.to_thread(extract_zip, archive, dest, budget)
        resource = bag.name.removesuffix(".zip")
        keep_folder(dest, PurePosixPath(resource, "data", "contents"))


async def download(http: GuardedHTTP, remote: RemoteFile, target: Path, budget: Budget, on_line: LineSink,
                   count_written: bool = True) -> None:
    """``remote`` into ``target`` (a folder: at its name under it; else that very file), counted against ``budget``."""
    await on_line(f"Fetching {remote.name} from {shown(remote.url)}\n")
    async with http.get(remote.url) as answer:
        response = answer.response
        if response.status_code != 200:
            raise FetchFailed(f"Downloading {remote.name} failed: {shown(answer.url)} answered {response.status_code}.",
                              "fetch_failed")
        length = response.headers.get("content-length", "")
        if length.isdigit():  # refused before a byte is read, when the server says how much is coming
            budget.check_fetch(int(length))
        fd = create_file(target, safe_name(remote.name)) if target.is_dir() else \
            os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            async for chunk in response.aiter_bytes(1 << 16):
                budget.fetch(len(chunk))
                if count_written:
                    budget.write(len(chunk))
                out.write(chunk)


class ContentFetcher:
    """``Fetcher`` by content: git repositories to ``git``, data repositories' records to ``data``."""

    def __init__(self, git: Fetcher, data: DataFetcher) -> None:
        self._git = git
        self._data = data

    async def fetch(self, repo_url: str, ref: str, dest: Path, on_line: LineSink, content: str = "git") -> None:
        if content == "git":
            await self._git.fetch(repo_url, ref, dest, on_line)
        else:
            await self._data.fetch(repo_url, ref, dest, on_line, content)
