"""A data repository's record is as hostile as a git repository: its archives' members, its file names,
its download links and its size obey the rules git checkouts do (tests/security/test_hostile_repos.py).

Real zip archives made here, served by the stand-ins for the repositories' APIs on loopback
(tests/support/datahost.py); the builder's own ``DataFetcher`` fetches them. Only the test's own
loopback is allowed past the URL guard.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from kiln_builder.datafetch import DataFetcher
from kiln_builder.errors import FetchFailed
from kiln_builder.fetch import FetchPolicy
from kiln_builder.swhvault import SwhVault
from kilnbus.guardedhttp import GuardedHTTP

from ..support.datahost import DataHost, make_targz, make_zip

POLICY = FetchPolicy(max_bytes=2**20, max_entries=20, max_fetch_bytes=2**20, allowed_private_hosts=["127.0.0.1"])


async def fetch_zenodo(host: DataHost, record: str, dest: Path, policy: FetchPolicy = POLICY) -> None:
    async def on_line(line: str) -> None:
        pass

    await DataFetcher(policy, timeout=30).fetch(f"{host.base('zenodo')}/api/records/{record}", record, dest, on_line,
                                                "zenodo")


@pytest.mark.parametrize(("archive", "says"), [
    (make_zip({"../escaped.txt": b"x"}), "leads outside it"),
    (make_zip({"ok/../../escaped.txt": b"x"}), "leads outside it"),
    (make_zip({"/etc/kiln-escaped": b"x"}), "leads outside it"),
    (make_zip({"repo/.git/hooks/post-checkout": b"#!/bin/sh\n"}), "a .git of its own"),
    (make_zip({"a.txt": b"x"}, links={"evil": "/etc/passwd"}), "symbolic link leading outside"),
    (make_zip({"a.txt": b"x"}, links={"sub/evil": "../../outside"}), "symbolic link leading outside"),
    (make_zip({"a.txt": b"x"}, links={"l1": "l2/..", "l2": "."}), "symbolic link leading outside"),
    (make_zip({"a.txt": b"x"}, links={"dir": "."}) + b"", None),  # a link inside is fine on its own ...
    (make_zip({"d/": b""}, links={"l": "d"}) , None),
    (make_zip({"a.txt": b"x"}, special={"dev": stat.S_IFCHR}), "not a file, folder or link"),
    (make_zip({"a.txt": b"x"}, special={"fifo": stat.S_IFIFO}), "not a file, folder or link"),
    (make_zip({"a.txt": b"1", "A/../a.txt": b"2"}), "leads outside it"),
])
async def test_hostile_archive_members_are_refused(datahost: DataHost, tmp_path: Path, archive: bytes,
                                                   says: str | None) -> None:
    datahost.add_zenodo("1", {"record.zip": archive})
    dest = tmp_path / "work" / "co"
    if says is None:
        await fetch_zenodo(datahost, "1", dest)
        return
    with pytest.raises(FetchFailed, match=says) as e:
        await fetch_zenodo(datahost, "1", dest)
    assert e.value.cause == "unsafe_repository"
    assert not dest.exists(), "nothing of a refused record is left to build"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [], "nothing written beside the checkout"
    assert not Path("/etc/kiln-escaped").exists()


async def test_writing_through_an_archived_link_is_refused(datahost: DataHost, tmp_path: Path) -> None:
    """A link to a folder inside is allowed, but nothing is then written through it (it could be re-pointed)."""
    archive = make_zip({"d/": b"", "l/x.txt": b"through"}, links={"l": "d"})
    datahost.add_zenodo("2", {"r.zip": archive})
    with pytest.raises(FetchFailed, match="through a symbolic link"):
        await fetch_zenodo(datahost, "2", tmp_path / "co")


@pytest.mark.parametrize("name", ["../x.txt", "/abs.txt", ".git/config", "a\\..\\b", "C:/x"])
async def test_hostile_file_names_in_a_record_are_refused(datahost: DataHost, tmp_path: Path, name: str) -> None:
    datahost.add_zenodo("3", {name: b"x", "other.txt": b"y"})
    with pytest.raises(FetchFailed) as e:
        await fetch_zenodo(datahost, "3", tmp_path / "co")
    assert e.value.cause == "unsafe_repository"
    assert not any(name.split("/")[-1] in p for p in datahost.requests[2:]), "refused before anything is downloaded"


async def test_too_big_unpacked_downloaded_or_too_many_files_is_refused(datahost: DataHost, tmp_path: Path) -> None:
    bomb = make_zip({"zeros.bin": b"\0" * (4 * 2**20)})  # 4 MiB of zeros: a few KiB compressed
    assert len(bomb) < 64 * 2**10
    datahost.add_zenodo("4", {"bomb.zip": bomb})
    with pytest.raises(FetchFailed, match="larger than 1 MiB unpacked") as e:
        await fetch_zenodo(datahost, "4", tmp_path / "a")
    assert e.value.cause == "repo_too_large"
    datahost.add_zenodo("5", {"big.bin": b"x" * (2 * 2**20)})
    with pytest.raises(FetchFailed, match="larger than this Binder fetches") as e:
        await fetch_zenodo(datahost, "5", tmp_path / "b")
    assert e.value.cause == "repo_too_large"
    datahost.add_zenodo("6", {"many.zip": make_zip({f"f{i}.txt": b"" for i in range(25)})})
    with pytest.raises(FetchFailed, match="more than 20 files") as e:
        await fetch_zenodo(datahost, "6", tmp_path / "c")
    assert e.value.cause == "repo_too_large"
    datahost.add_zenodo("7", {f"f{i}.txt": b"" for i in range(25)})
    with pytest.raises(FetchFailed, match="more than 20 files"):
        await fetch_zenodo(datahost, "7", tmp_path / "d")


async def test_an_announced_length_past_the_limit_is_refused_before_reading(datahost: DataHost, tmp_path: Path) -> None:
    datahost.overrides["/raw/huge"] = (200, {"Content-Length": str(2**30)}, b"")
    datahost.add_zenodo("8", {"a.bin": b""}, links={"a.bin": f"{datahost.url}/raw/huge"})
    with pytest.raises(FetchFailed, match="larger than this Binder fetches"):
        await fetch_zenodo(datahost, "8", tmp_path / "co")


@pytest.mark.parametrize("link", [
    "http://10.0.0.1/file",  # a private address
    "http://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
    "http://[::1]:9/x",  # loopback, but not the address the test allowed
    "file:///etc/passwd",
    "http://user:secret@127.0.0.1/raw/x",
])
async def test_file_links_to_non_public_addresses_or_odd_schemes_are_refused(datahost: DataHost, tmp_path: Path,
                                                                             link: str) -> None:
    datahost.add_zenodo("9", {"a.txt": b""}, links={"a.txt": link})
    with pytest.raises(FetchFailed) as e:
        await fetch_zenodo(datahost, "9", tmp_path / "co")
    assert e.value.cause in ("private_host", "banned", "credentials_in_url")


async def test_a_redirect_into_a_private_network_is_refused(datahost: DataHost, tmp_path: Path) -> None:
    datahost.add_zenodo("10", {"a.txt": b""}, links={"a.txt": f"{datahost.url}/redirect?to=http://192.168.1.1/admin"})
    with pytest.raises(FetchFailed, match="private network") as e:
        await fetch_zenodo(datahost, "10", tmp_path / "co")
    assert e.value.cause == "private_host"


async def test_without_the_loopback_allowed_the_stand_in_itself_is_refused(datahost: DataHost, tmp_path: Path) -> None:
    """The positive control of the tests above: the allowance is what lets the tests reach 127.0.0.1 at all."""
    datahost.add_zenodo("11", {"a.txt": b"1"})
    with pytest.raises(FetchFailed, match="private network"):
        await fetch_zenodo(datahost, "11", tmp_path / "co", FetchPolicy(max_bytes=2**20))
    assert datahost.requests == []


async def test_a_record_that_takes_too_long_is_stopped(datahost: DataHost, tmp_path: Path) -> None:
    import threading
    gate = threading.Event()
    datahost.add_zenodo("12", {"a.txt": b"1"})
    original = datahost.overrides

    class Slow(dict[str, tuple[int, dict[str, str], bytes]]):
        def __contains__(self, key: object) -> bool:
            if key == "/zenodo/api/records/12":
                gate.wait(5)
            return False

    datahost.overrides = Slow()
    try:
        async def on_line(line: str) -> None:
            pass
        with pytest.raises(FetchFailed, match="took longer than 1 seconds"):
            await DataFetcher(POLICY, timeout=1).fetch(f"{datahost.base('zenodo')}/api/records/12", "12",
                                                       tmp_path / "co", on_line, "zenodo")
    finally:
        gate.set()
        datahost.overrides = original


@pytest.mark.parametrize(("link", "cause"), [("http://10.0.0.1/levels.csv", "private_host"),
                                             ("file:///etc/passwd", "banned"),
                                             ("http://127.0.0.1:9/..%2F..%2Fescape", "unsafe_repository")])
async def test_ckan_resource_links_obey_the_same_rules(datahost: DataHost, tmp_path: Path, link: str, cause: str) -> None:
    """A CKAN site lists resources by URL: any URL, and the file is named as its path ends."""
    datahost.add_ckan("hostile", {link: b""})
    with pytest.raises(FetchFailed) as e:
        await DataFetcher(POLICY).fetch(f"{datahost.base('ckan')}/api/3/action/package_show?id=hostile", "v",
                                        tmp_path / "co", _quiet, "ckan")
    assert e.value.cause == cause, e.value
    assert not (tmp_path / "co").exists()


async def _quiet(line: str) -> None:
    pass


# Software Heritage: the vault's tar.gz is unpacked by Kiln's own tar reader, under the zips' rules.


def swh_archive(host: DataHost, files: dict[str, bytes], **more: Any) -> str:
    """A directory whose vault bundle is an archive made here; ``{top}`` in names is the folder named by its SWHID."""
    directory = host.add_swh_directory({"placeholder": b""})
    top = f"swh:1:dir:{directory}"
    named = {kind: {name.format(top=top): value for name, value in entries.items()} for kind, entries in more.items()}
    host.raw[f"swh-{directory}.tar.gz"] = make_targz({name.format(top=top): data for name, data in files.items()},
                                                     **named)
    return directory


async def fetch_swh(host: DataHost, directory: str, dest: Path, policy: FetchPolicy = POLICY) -> None:
    async def on_line(line: str) -> None:
        pass

    await DataFetcher(policy, timeout=30, swh=SwhVault(host.base("swh"), first_poll_s=0.01)).fetch(
        f"{host.base('swh')}/api/1/vault/flat/swh:1:dir:{directory}/", directory, dest, on_line, "swh")


@pytest.mark.parametrize(("files", "more", "says"), [
    ({"{top}/../escaped.txt": b"x"}, {}, "leads outside it"),
    ({"{top}/a/../../../escaped.txt": b"x"}, {}, "leads outside it"),
    ({"/etc/kiln-escaped": b"x"}, {}, "leads outside it"),
    ({"{top}/.git/hooks/post-checkout": b"#!/bin/sh\n"}, {}, "a .git of its own"),
    ({"{top}/a.txt": b"x"}, {"links": {"{top}/evil": "/etc/passwd"}}, "symbolic link leading outside"),
    ({"{top}/a.txt": b"x"}, {"links": {"{top}/sub/evil": "../../../outside"}}, "symbolic link leading outside"),
    ({"{top}/a.txt": b"x"}, {"links": {"{top}/l1": "l2/..", "{top}/l2": ".."}}, "symbolic link leading outside"),
    ({"{top}/a.txt": b"x"}, {"links": {"{top}/long": "a/" * 3000}}, "symbolic link that is not a path"),
    ({"{top}/a.txt": b"x"}, {"hardlinks": {"{top}/passwd": "/etc/passwd"}}, "not a file, folder or link"),
    ({"{top}/a.txt": b"x"}, {"hardlinks": {"{top}/b.txt": "{top}/a.txt"}}, "not a file, folder or link"),
    ({"{top}/a.txt": b"x"}, {"special": {"{top}/dev": tarfile.CHRTYPE}}, "not a file, folder or link"),
    ({"{top}/a.txt": b"x"}, {"special": {"{top}/fifo": tarfile.FIFOTYPE}}, "not a file, folder or link"),
    ({"{top}/a.txt": b"1", "{top}/A/../a.txt": b"2"}, {}, "leads outside it"),
    ({"{top}/d/": b"", "{top}/l/x.txt": b"through"}, {"links": {"{top}/l": "d"}}, "through a symbolic link"),
    ({"{top}/a.txt": b"x"}, {"links": {"{top}/inside": "a.txt"}}, None),  # a link that stays inside is kept
])
async def test_hostile_vault_archives_are_refused(datahost: DataHost, tmp_path: Path, files: dict[str, bytes],
                                                  more: dict[str, Any], says: str | None) -> None:
    directory = swh_archive(datahost, files, **more)
    dest = tmp_path / "work" / "co"
    if says is None:
        await fetch_swh(datahost, directory, dest)
        assert os.readlink(dest / "inside") == "a.txt"
        return
    with pytest.raises(FetchFailed, match=says) as e:
        await fetch_swh(datahost, directory, dest)
    assert e.value.cause == "unsafe_repository"
    assert not dest.exists(), "nothing of a refused record is left to build"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [], "nothing written beside the checkout"
    assert not Path("/etc/kiln-escaped").exists()


async def test_a_vault_archive_bomb_or_garbage_is_refused(datahost: DataHost, tmp_path: Path) -> None:
    # A pax header tarfile would read whole into memory: 64 MiB of it in a few KiB of gzip. Refused at
    # its header, whatever the size limit (none at all included), before any of it is read.
    bomb = swh_archive(datahost, {"{top}/a.txt": b"x"}, pax={"comment": "x" * (64 * 2**20)})
    assert len(datahost.raw[f"swh-{bomb}.tar.gz"]) < 2**20
    for policy in (POLICY, dataclasses.replace(POLICY, max_bytes=0)):
        tracemalloc.start()
        with pytest.raises(FetchFailed, match="a header .* larger than 1 MiB") as e:
            await fetch_swh(datahost, bomb, tmp_path / f"a{policy.max_bytes}", policy)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert e.value.cause == "unsafe_repository" and peak < 16 * 2**20, peak
    for name, garbage in (("not-gzip", b"PK\x03\x04 not a tarball"), ("cut", make_targz({"a/b.txt": os.urandom(5000)})[:2000])):
        directory = datahost.add_swh_directory({name: b""})
        datahost.raw[f"swh-{directory}.tar.gz"] = garbage
        with pytest.raises(FetchFailed, match="tar archive could not be unpacked") as e:
            await fetch_swh(datahost, directory, tmp_path / name)
        assert e.value.cause == "fetch_failed" and not (tmp_path / name).exists()


async def test_a_vault_download_leading_into_a_private_network_is_refused(datahost: DataHost, tmp_path: Path) -> None:
    directory = datahost.add_swh_directory({"a.txt": b"1"})
    datahost.overrides[f"/swh/api/1/vault/flat/swh:1:dir:{directory}/raw/"] = (302, {"Location": "http://10.0.0.1/x"}, b"")
    with pytest.raises(FetchFailed, match="private network") as e:
        await fetch_swh(datahost, directory, tmp_path / "co")
    assert e.value.cause == "private_host"


async def test_a_token_is_not_handed_to_the_host_a_redirect_leads_to(datahost: DataHost) -> None:
    """kilnbus.guardedhttp drops Authorization when a redirect changes scheme, host or port (as browsers do)."""
    port = datahost.url.rsplit(":", 1)[1]
    datahost.raw["x"] = b"x"
    http = GuardedHTTP(allowed_private_hosts=["127.0.0.1", "localhost"])
    try:
        for first, then in ((f"{datahost.url}/redirect?to=/raw/x", "Bearer t"),  # the same host: kept
                            (f"{datahost.url}/redirect?to=http://localhost:{port}/raw/x", "")):  # another: dropped
            datahost.authorizations.clear()
            async with http.get(first, {"Authorization": "Bearer t"}) as answer:
                assert answer.response.status_code == 200
            assert [auth for _, auth in datahost.authorizations] == ["Bearer t", then]
    finally:
        await http.aclose()
