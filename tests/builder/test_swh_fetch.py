"""The builder fetches a Software Heritage directory through the vault: asks for it to be cooked, waits
(bounded, saying how it goes), downloads the tar.gz and unpacks it with Kiln's own unpacker, its one
folder the checkout. The vault is the stand-in on loopback (tests/support/datahost.py), serving real
tar.gz archives; in memory, no Docker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln_builder.datafetch import DataFetcher
from kiln_builder.errors import FetchFailed
from kiln_builder.fetch import FetchPolicy
from kiln_builder.swhvault import SwhVault

from ..support.datahost import DataHost, make_targz

POLICY = FetchPolicy(max_bytes=2**20, max_entries=50, max_fetch_bytes=2**20, allowed_private_hosts=["127.0.0.1"])


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def vault(host: DataHost, **more: object) -> SwhVault:
    options: dict[str, object] = {"archive_url": host.base("swh"), "first_poll_s": 0.01, "max_poll_s": 0.05, **more}
    return SwhVault(**options)  # type: ignore[arg-type]


async def fetch_swh(host: DataHost, directory: str, dest: Path, swh: SwhVault | None = None,
                    policy: FetchPolicy = POLICY) -> list[str]:
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    url = f"{host.base('swh')}/api/1/vault/flat/swh:1:dir:{directory}/"
    await DataFetcher(policy, timeout=30, swh=swh or vault(host)).fetch(url, directory, dest, on_line, "swh")
    return lines


async def test_a_directory_is_cooked_waited_for_downloaded_and_unpacked(datahost: DataHost, tmp_path: Path) -> None:
    files = {"requirements.txt": b"numpy\n", "nb/index.ipynb": b"{}", "postBuild.sh": b"#!/bin/sh\n"}
    directory = datahost.add_swh_directory(files, cook_polls=2)
    lines = await fetch_swh(datahost, directory, tmp_path / "co")
    assert tree(tmp_path / "co") == files, "the folder named by the SWHID is the checkout"
    assert os.access(tmp_path / "co" / "postBuild.sh", os.X_OK) and not os.access(tmp_path / "co" / "requirements.txt",
                                                                                  os.X_OK), "modes as archived"
    log = "".join(lines)
    assert lines[0].startswith("Picked swh content provider.")
    assert f"Asking the Software Heritage vault for swh:1:dir:{directory}" in log
    assert "Software Heritage vault: new, 0s so far" in log
    assert "Software Heritage vault: pending (Processing... 1/2)" in log, "progress, as the vault says it"
    assert f"swh:1:dir:{directory} is ready" in log and f"Extracting swh_1_dir_{directory}.tar.gz" in log
    vault_path = f"/swh/api/1/vault/flat/swh:1:dir:{directory}/"
    assert datahost.requests == [f"POST {vault_path}", vault_path, vault_path, vault_path, f"{vault_path}raw/",
                                 f"/raw/swh-{directory}.tar.gz"], "asked once, polled until done, raw redirected to storage"


async def test_a_directory_already_cooked_is_downloaded_at_once(datahost: DataHost, tmp_path: Path) -> None:
    directory = datahost.add_swh_directory({"a.txt": b"1"})
    await fetch_swh(datahost, directory, tmp_path / "co")
    assert tree(tmp_path / "co") == {"a.txt": b"1"}
    assert not any(p == f"/swh/api/1/vault/flat/swh:1:dir:{directory}/" for p in datahost.requests), "no polling"


async def test_failed_cooking_says_why_and_leaves_nothing(datahost: DataHost, tmp_path: Path) -> None:
    directory = datahost.add_swh_directory({"a.txt": b"1"}, cook_polls=1, cook_error="Internal Server Error\nin cooker")
    with pytest.raises(FetchFailed, match=f"could not prepare swh:1:dir:{directory}: Internal Server Error in cooker") as e:
        await fetch_swh(datahost, directory, tmp_path / "co")
    assert e.value.cause == "fetch_failed" and not (tmp_path / "co").exists()


async def test_the_wait_is_bounded(datahost: DataHost, tmp_path: Path) -> None:
    directory = datahost.add_swh_directory({"a.txt": b"1"}, cook_polls=10_000)
    with pytest.raises(FetchFailed, match=r"had not finished preparing .* after 0.5 seconds \(it said: pending, "
                                          r"Processing\.\.\. \d+/10000\)\. It goes on without Kiln") as e:
        await fetch_swh(datahost, directory, tmp_path / "co", vault(datahost, max_wait_s=0.5))
    assert e.value.cause == "fetch_failed" and not (tmp_path / "co").exists()


@pytest.mark.parametrize(("answer", "says"), [
    ((404, {}, b'{"exception": "NotFoundExc"}'), "is not in the Software Heritage archive"),
    ((429, {}, b"{}"), "is limiting Kiln's requests"),
    ((401, {}, b"{}"), "refused Kiln's request \\(401\\)"),
    ((502, {}, b"bad gateway"), "vault answered 502"),
])
async def test_the_vaults_refusals_say_what_they_are(datahost: DataHost, tmp_path: Path, answer: tuple[int, dict[str, str], bytes],
                                                     says: str) -> None:
    directory = datahost.add_swh_directory({"a.txt": b"1"})
    datahost.overrides[f"/swh/api/1/vault/flat/swh:1:dir:{directory}/"] = answer
    with pytest.raises(FetchFailed, match=says):
        await fetch_swh(datahost, directory, tmp_path / "co")


async def test_too_large_unpacked_or_downloaded_is_refused(datahost: DataHost, tmp_path: Path) -> None:
    zeros = datahost.add_swh_directory({"zeros.bin": b"\0" * (2 * 2**20)})  # a few KiB of gzip
    with pytest.raises(FetchFailed, match="larger than 1 MiB unpacked") as e:
        await fetch_swh(datahost, zeros, tmp_path / "a")
    assert e.value.cause == "repo_too_large"
    noise = datahost.add_swh_directory({"noise.bin": os.urandom(2 * 2**20)})  # as large compressed
    with pytest.raises(FetchFailed, match="larger than this Binder fetches") as e:
        await fetch_swh(datahost, noise, tmp_path / "b")
    assert e.value.cause == "repo_too_large"
    many = datahost.add_swh_directory({f"f{i}.txt": b"" for i in range(60)})
    with pytest.raises(FetchFailed, match="more than 50 files") as e:
        await fetch_swh(datahost, many, tmp_path / "c")
    assert e.value.cause == "repo_too_large"


async def test_the_token_goes_to_the_vaults_api_only(datahost: DataHost, tmp_path: Path) -> None:
    directory = datahost.add_swh_directory({"a.txt": b"1"}, cook_polls=1)
    await fetch_swh(datahost, directory, tmp_path / "a", vault(datahost, token="swh-secret"))
    sent = {path: auth for path, auth in datahost.authorizations}
    assert sent[f"/swh/api/1/vault/flat/swh:1:dir:{directory}/"] == "Bearer swh-secret"
    assert sent[f"/swh/api/1/vault/flat/swh:1:dir:{directory}/raw/"] == "", "the download is not the API"
    assert sent[f"/raw/swh-{directory}.tar.gz"] == ""
    datahost.authorizations.clear()
    # A vault URL that is not under the archive the builder was told about gets no token at all.
    await fetch_swh(datahost, directory, tmp_path / "b", vault(datahost, token="swh-secret",
                                                               archive_url="https://archive.softwareheritage.org"))
    assert {auth for _, auth in datahost.authorizations} == {""}


async def test_the_archives_one_folder_may_be_named_by_the_bare_id_and_must_be_the_only_thing(
        datahost: DataHost, tmp_path: Path) -> None:
    bare = datahost.add_swh_directory({"a.txt": b"1"})  # older vaults named the folder by the id alone
    datahost.swh_dirs[bare].archive = datahost.raw[f"swh-{bare}.tar.gz"] = make_targz({f"{bare}/a.txt": b"1"})
    await fetch_swh(datahost, bare, tmp_path / "bare")
    assert tree(tmp_path / "bare") == {"a.txt": b"1"}
    other = datahost.add_swh_directory({"b.txt": b"2"})
    datahost.raw[f"swh-{other}.tar.gz"] = make_targz({"elsewhere/b.txt": b"2"})
    with pytest.raises(FetchFailed, match=f"should hold one folder, swh:1:dir:{other}, and holds elsewhere"):
        await fetch_swh(datahost, other, tmp_path / "other")
    loose = datahost.add_swh_directory({"c.txt": b"3"})
    datahost.raw[f"swh-{loose}.tar.gz"] = make_targz({f"swh:1:dir:{loose}/c.txt": b"3", "stray.txt": b""})
    with pytest.raises(FetchFailed, match="and holds stray.txt, swh:1:dir:"):
        await fetch_swh(datahost, loose, tmp_path / "loose")


async def test_a_url_that_is_no_vault_directory_is_refused(datahost: DataHost, tmp_path: Path) -> None:
    async def on_line(line: str) -> None:
        pass

    with pytest.raises(FetchFailed, match="is not a Software Heritage vault URL of a directory"):
        await DataFetcher(POLICY, swh=vault(datahost)).fetch(f"{datahost.base('swh')}/api/1/vault/flat/swh:1:rev:{'a' * 40}/",
                                                             "a" * 40, tmp_path / "co", on_line, "swh")
    assert datahost.requests == []
