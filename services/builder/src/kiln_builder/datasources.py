"""What each data repository's record holds: its files' names and download links, read from its API.

The resolver puts the API URL of the exact record version in the build request (``repo_url``);
these read it as repo2docker's content providers do, and say how the files are laid out once
fetched (``Listing.layout``). Every request goes through ``kilnbus.guardedhttp``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from kiln_builder.errors import FetchFailed
from kilnbus.guardedhttp import GuardedHTTP


class Layout(enum.Enum):
    """How the fetched files become the checkout (repo2docker's rules, by provider)."""

    FILES = "files"  # each file where its name says
    SINGLE_ZIP = "single_zip"  # one file that is a zip: unpacked, and a lone top folder becomes the root
    SINGLE_NAMED_ZIP = "single_named_zip"  # the same, when the one file's name ends in .zip (Figshare)
    HOIST = "hoist"  # files as named, then a lone top folder becomes the root (Dataverse)
    BAG = "bag"  # one BagIt zip, prepared on demand; its <id>/data/contents becomes the root (HydroShare)
    SINGLE_TARBALL = "single_tarball"  # one tar.gz holding one folder named one of Listing.roots, which becomes the root


@dataclass(frozen=True)
class RemoteFile:
    """One file of a record: where it goes in the checkout and where it is downloaded from."""

    name: str
    url: str
    size: int | None = None


@dataclass(frozen=True)
class Listing:
    """A record's files and how they are laid out."""

    title: str  # what the build log calls the record
    files: list[RemoteFile]
    layout: Layout
    roots: tuple[str, ...] = ()  # SINGLE_TARBALL: the names its one top folder may have


def _get(body: Any, *path: str) -> Any:
    for key in path:
        body = body.get(key) if isinstance(body, dict) else None
    return body


async def read_json(http: GuardedHTTP, url: str) -> Any:
    """The JSON at ``url``; FetchFailed (record gone, API down) if there is none."""
    status, body, _ = await http.get_json(url)
    if status in (404, 410):
        raise FetchFailed(f"The record at {url} is gone (the API answered {status}).", "fetch_failed")
    if status != 200 or body is None:
        raise FetchFailed(f"The record's API at {url} answered {status}.", "fetch_failed")
    return body


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


async def zenodo(http: GuardedHTTP, repo_url: str) -> Listing:
    """``/api/records/<id>``, its files from ``links.files`` (entries) or the record's own ``files``."""
    record = await read_json(http, repo_url)
    files_url = _get(record, "links", "files")
    entries = _get(await read_json(http, files_url), "entries") if isinstance(files_url, str) else _get(record, "files")
    if not isinstance(entries, list):
        raise FetchFailed(f"The Zenodo record at {repo_url} lists no files.", "fetch_failed")
    files = []
    for entry in entries:
        name, url = _get(entry, "key"), _get(entry, "links", "content") or _get(entry, "links", "self")
        if not isinstance(name, str) or not isinstance(url, str):
            raise FetchFailed(f"The Zenodo record at {repo_url} lists a file without a name or link.", "fetch_failed")
        files.append(RemoteFile(name, url, _size(_get(entry, "size"))))
    return Listing(f"Zenodo record {repo_url.rstrip('/').rsplit('/', 1)[-1]}", files, Layout.SINGLE_ZIP)


async def figshare(http: GuardedHTTP, repo_url: str) -> Listing:
    """``<api>/articles/<id>/versions/<N>``: its ``files``, link-only ones left out; a lone ``.zip`` is unpacked."""
    article = await read_json(http, repo_url)
    entries = _get(article, "files")
    if not isinstance(entries, list):
        raise FetchFailed(f"The Figshare article at {repo_url} lists no files.", "fetch_failed")
    files = []
    for entry in entries:
        if _get(entry, "is_link_only"):
            continue  # a link to elsewhere, not a file of the article (repo2docker skips them too)
        name, url = _get(entry, "name"), _get(entry, "download_url")
        if not isinstance(name, str) or not isinstance(url, str):
            raise FetchFailed(f"The Figshare article at {repo_url} lists a file without a name or link.", "fetch_failed")
        files.append(RemoteFile(name, url, _size(_get(entry, "size"))))
    parts = repo_url.rstrip("/").split("/")
    return Listing(f"Figshare article {parts[-3]} version {parts[-1]}", files, Layout.SINGLE_NAMED_ZIP)


async def dataverse(http: GuardedHTTP, repo_url: str) -> Listing:
    """``<base>/api/datasets/:persistentId/versions/<v>``: its files, each in its original format, in its folder."""
    version = _get(await read_json(http, repo_url), "data")
    entries = _get(version, "files")
    if not isinstance(entries, list):
        raise FetchFailed(f"The Dataverse dataset at {shown(repo_url)} lists no files.", "fetch_failed")
    base = repo_url.split("/api/datasets/", 1)[0]
    files = []
    for entry in entries:
        file_id = _get(entry, "dataFile", "id")
        # Tabular files are served converted (.tab) unless asked for the original, whose name is kept apart.
        name = _get(entry, "dataFile", "originalFileName") or _get(entry, "label")
        if not isinstance(file_id, int) or not isinstance(name, str):
            raise FetchFailed(f"The Dataverse dataset at {shown(repo_url)} lists a file without an id or name.", "fetch_failed")
        folder = _get(entry, "directoryLabel")
        files.append(RemoteFile(f"{folder}/{name}" if isinstance(folder, str) and folder else name,
                                f"{base}/api/access/datafile/{file_id}?format=original",
                                _size(_get(entry, "dataFile", "filesize"))))
    return Listing(f"Dataverse dataset version {repo_url.split('/versions/', 1)[-1].split('?', 1)[0]}", files, Layout.HOIST)


async def hydroshare(http: GuardedHTTP, repo_url: str) -> Listing:
    """``<base>/django_s3/download/bags/<id>.zip``: the resource's bag, the one file (``DataFetcher`` waits for it)."""
    name = repo_url.rstrip("/").rsplit("/", 1)[-1]
    if not re.fullmatch(r"[0-9a-f]{32}\.zip", name):
        raise FetchFailed(f"{shown(repo_url)} is not a HydroShare resource's bag.", "fetch_failed")
    return Listing(f"HydroShare resource {name.removesuffix('.zip')}", [RemoteFile(name, repo_url)], Layout.BAG)


async def ckan(http: GuardedHTTP, repo_url: str) -> Listing:
    """``<api>/package_show?id=...`` or ``activity_data_show``: the version's resources, each a file named as
    its URL ends (else by its id), as repo2docker names them; resources with no URL are left out."""
    entries = _get(await read_json(http, repo_url), "result", "resources")
    if not isinstance(entries, list):
        raise FetchFailed(f"The CKAN dataset at {shown(repo_url)} lists no resources.", "fetch_failed")
    files = []
    for entry in entries:
        url = _get(entry, "url")
        if not url:
            continue
        if not isinstance(url, str):
            raise FetchFailed(f"The CKAN dataset at {shown(repo_url)} lists a resource whose URL is not text.", "fetch_failed")
        name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) or str(_get(entry, "id"))
        files.append(RemoteFile(name, url, _size(_get(entry, "size"))))
    which = parse_qs(urlsplit(repo_url).query).get("id", [""])[0]
    return Listing(f"CKAN dataset {which}".strip(), files, Layout.FILES)


Lister = Callable[[GuardedHTTP, str], Awaitable[Listing]]

# content kind (BuildRequested.content) -> how its record is read
LISTERS: dict[str, Lister] = {"zenodo": zenodo, "figshare": figshare, "dataverse": dataverse, "hydroshare": hydroshare,
                              "ckan": ckan}


def shown(url: str) -> str:
    """``url`` without its query, for the build log."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()
