"""The builder fetches a data repository's record as repo2docker does: every file, a record's single zip
unpacked, a lone top folder made the root. The real APIs are answered by stand-ins on loopback
(tests/support/datahost.py) from real files and zip archives; in memory, no Docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln_builder.datafetch import ContentFetcher, DataFetcher
from kiln_builder.errors import FetchFailed
from kiln_builder.fetch import FetchPolicy

from ..support.datahost import DataHost, make_zip

POLICY = FetchPolicy(max_bytes=2**20, max_entries=50, max_fetch_bytes=2**20, allowed_private_hosts=["127.0.0.1"])


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def fetch_record(url: str, content: str, dest: Path, policy: FetchPolicy = POLICY,
                       timeout: float = 30) -> list[str]:
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    await DataFetcher(policy, timeout=timeout).fetch(url, "v", dest, on_line, content)
    return lines


async def test_zenodo_files_are_fetched_as_named(datahost: DataHost, tmp_path: Path) -> None:
    datahost.add_zenodo("11", {"requirements.txt": b"numpy\n", "index.ipynb": b"{}", "data/x.csv": b"1,2\n"})
    lines = await fetch_record(f"{datahost.base('zenodo')}/api/records/11", "zenodo", tmp_path / "co")
    assert tree(tmp_path / "co") == {"requirements.txt": b"numpy\n", "index.ipynb": b"{}", "data/x.csv": b"1,2\n"}
    assert lines[0].startswith("Picked zenodo content provider.") and any("3 files" in line for line in lines)


async def test_zenodo_single_zip_is_unpacked_and_its_lone_folder_becomes_the_root(datahost: DataHost,
                                                                                 tmp_path: Path) -> None:
    archive = make_zip({"binder-examples-abc123/": b"", "binder-examples-abc123/requirements.txt": b"pandas\n",
                        "binder-examples-abc123/sub/nb.ipynb": b"{}"})
    datahost.add_zenodo("12", {"release.zip": archive})
    await fetch_record(f"{datahost.base('zenodo')}/api/records/12", "zenodo", tmp_path / "co")
    assert tree(tmp_path / "co") == {"requirements.txt": b"pandas\n", "sub/nb.ipynb": b"{}"}


async def test_a_zip_among_several_files_or_with_several_top_entries_stays_as_it_is(datahost: DataHost,
                                                                                   tmp_path: Path) -> None:
    archive = make_zip({"a/x.txt": b"x", "b.txt": b"b"})
    datahost.add_zenodo("13", {"data.zip": archive, "README.md": b"hi"})
    await fetch_record(f"{datahost.base('zenodo')}/api/records/13", "zenodo", tmp_path / "one")
    assert tree(tmp_path / "one") == {"data.zip": archive, "README.md": b"hi"}, "several files: none is unpacked"
    datahost.add_zenodo("14", {"data.zip": archive})
    await fetch_record(f"{datahost.base('zenodo')}/api/records/14", "zenodo", tmp_path / "two")
    assert tree(tmp_path / "two") == {"a/x.txt": b"x", "b.txt": b"b"}, "two top entries: no folder is hoisted"


async def test_a_single_file_that_is_not_a_zip_is_kept(datahost: DataHost, tmp_path: Path) -> None:
    datahost.add_zenodo("15", {"analysis.py": b"print(1)\n"})
    await fetch_record(f"{datahost.base('zenodo')}/api/records/15", "zenodo", tmp_path / "co")
    assert tree(tmp_path / "co") == {"analysis.py": b"print(1)\n"}


async def test_file_links_may_redirect_to_another_public_host(datahost: DataHost, tmp_path: Path) -> None:
    """Zenodo's and Figshare's download links redirect to storage hosts: followed, each hop checked."""
    datahost.raw["stored.txt"] = b"from storage\n"
    datahost.add_zenodo("16", {"a.txt": b""}, links={"a.txt": f"{datahost.url}/redirect?to={datahost.url}/raw/stored.txt"})
    await fetch_record(f"{datahost.base('zenodo')}/api/records/16", "zenodo", tmp_path / "co")
    assert tree(tmp_path / "co") == {"a.txt": b"from storage\n"}


async def test_a_record_gone_or_a_file_missing_fails_clearly(datahost: DataHost, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="is gone"):
        await fetch_record(f"{datahost.base('zenodo')}/api/records/404", "zenodo", tmp_path / "co")
    datahost.add_zenodo("17", {"a.txt": b"1"}, links={"a.txt": f"{datahost.url}/raw/missing"})
    with pytest.raises(FetchFailed, match="Downloading a.txt failed: .* answered 404") as e:
        await fetch_record(f"{datahost.base('zenodo')}/api/records/17", "zenodo", tmp_path / "co")
    assert e.value.cause == "fetch_failed" and not (tmp_path / "co").exists(), "nothing half-fetched is left"


async def test_content_routes_git_to_git_and_records_to_the_data_fetcher(datahost: DataHost, tmp_path: Path) -> None:
    calls: list[str] = []

    class Git:
        async def fetch(self, repo_url: str, ref: str, dest: Path, on_line: object, content: str = "git") -> None:
            calls.append(repo_url)

    async def on_line(line: str) -> None:
        pass

    datahost.add_zenodo("18", {"a.txt": b"1"})
    fetcher = ContentFetcher(Git(), DataFetcher(POLICY))
    await fetcher.fetch("https://git.example/r.git", "abc", tmp_path / "g", on_line)
    await fetcher.fetch(f"{datahost.base('zenodo')}/api/records/18", "18", tmp_path / "z", on_line, "zenodo")
    assert calls == ["https://git.example/r.git"] and tree(tmp_path / "z") == {"a.txt": b"1"}
    with pytest.raises(FetchFailed, match="does not know how to fetch 'svn'"):
        await fetcher.fetch("https://x.example/", "1", tmp_path / "s", on_line, "svn")


def test_a_build_request_written_before_content_existed_reads_as_git() -> None:
    """schemas/previous/build_requested.v1.avsc: requests queued by an older resolver are fetched with git."""
    import json
    from datetime import UTC, datetime

    from kilnbus import BuildRequested
    from kilnbus.codec import AvroCodec
    from kilnbus.schemas import load_schemas, schema_dir

    v1 = json.loads((schema_dir() / "previous" / "build_requested.v1.avsc").read_text())
    codec = AvroCodec(*load_schemas())
    when = datetime(2026, 5, 1, tzinfo=UTC)
    data = codec.encode_with(v1, {"request_id": "r", "image_name": "i:1", "repo_url": "https://h/r.git", "ref": "a" * 40,
                                  "provider": "git", "spec": "s", "ref_url": "", "resolved_spec": "", "requested_at": when,
                                  "launch": True, "hub_user": None, "launch_host": "", "client_ip": None})
    decoded = codec.decode(data)
    assert isinstance(decoded, BuildRequested) and decoded.content == "git" and decoded.repo_url == "https://h/r.git"


async def test_figshare_version_files_are_fetched_link_only_ones_left_out(datahost: DataHost, tmp_path: Path) -> None:
    datahost.add_figshare("21", {1: {"old.txt": b"old"}, 2: {"environment.yml": b"name: x\n", "see-also": b""}},
                          link_only=["see-also"])
    url = f"{datahost.base('figshare-api')}/v2/articles/21/versions/2"
    await fetch_record(url, "figshare", tmp_path / "co")
    assert tree(tmp_path / "co") == {"environment.yml": b"name: x\n"}, "version 2 only, through ndownloader's redirect"
    assert any(p.startswith("/raw/s3-21-2-") for p in datahost.requests)


async def test_figshare_single_zip_is_unpacked_only_when_named_so(datahost: DataHost, tmp_path: Path) -> None:
    archive = make_zip({"project/requirements.txt": b"scipy\n"})
    datahost.add_figshare("22", {1: {"project.zip": archive}, 2: {"project.bin": archive}})
    base = f"{datahost.base('figshare-api')}/v2/articles/22/versions"
    await fetch_record(f"{base}/1", "figshare", tmp_path / "zip")
    assert tree(tmp_path / "zip") == {"requirements.txt": b"scipy\n"}
    await fetch_record(f"{base}/2", "figshare", tmp_path / "bin")
    assert tree(tmp_path / "bin") == {"project.bin": archive}, "repo2docker unpacks Figshare files named .zip only"


async def test_dataverse_version_files_land_in_their_folders_and_a_lone_folder_is_the_root(
        datahost: DataHost, tmp_path: Path) -> None:
    datahost.add_dataverse("10.7910/DVN/X", {(1, 0): {"old.txt": b"old"},
                                             (2, 0): {"code/requirements.txt": b"numpy\n", "code/nb/a.ipynb": b"{}"}})
    base = f"{datahost.base('dataverse')}/api/datasets/:persistentId/versions"
    await fetch_record(f"{base}/2.0?persistentId=doi:10.7910/DVN/X", "dataverse", tmp_path / "v2")
    assert tree(tmp_path / "v2") == {"requirements.txt": b"numpy\n", "nb/a.ipynb": b"{}"}
    await fetch_record(f"{base}/1.0?persistentId=doi:10.7910/DVN/X", "dataverse", tmp_path / "v1")
    assert tree(tmp_path / "v1") == {"old.txt": b"old"}, "the version resolved, not the latest"
    assert any("format=original" in p for p in datahost.requests)


# HydroShare: the resource's bag, prepared on demand; its data/contents is the checkout.

HS = "8f7c2f0341ef4180b0dbe97f59130756"


async def test_hydroshare_bag_is_waited_for_and_its_contents_become_the_root(datahost: DataHost, tmp_path: Path) -> None:
    datahost.add_hydroshare(HS, {"environment.yml": b"dependencies: [numpy]\n", "nb/a.ipynb": b"{}"}, prepare=2)
    lines = await fetch_record(f"{datahost.base('hydroshare')}/django_s3/download/bags/{HS}.zip", "hydroshare",
                               tmp_path / "co")
    assert tree(tmp_path / "co") == {"environment.yml": b"dependencies: [numpy]\n", "nb/a.ipynb": b"{}"}, \
        "bag metadata (bagit.txt, manifests, resourcemap) left out"
    assert sum("being prepared" in line for line in lines) == 2 and datahost.hydroshare[HS].prepare == 0


async def test_hydroshare_bag_never_ready_or_without_contents_fails_saying_why(datahost: DataHost, tmp_path: Path) -> None:
    datahost.add_hydroshare(HS, {"a.txt": b"a"}, prepare=1000)
    with pytest.raises(FetchFailed, match="took longer than 2 seconds"):
        await fetch_record(f"{datahost.base('hydroshare')}/django_s3/download/bags/{HS}.zip", "hydroshare",
                           tmp_path / "slow", timeout=2)
    assert not (tmp_path / "slow").exists(), "nothing half-fetched is left to build"
    datahost.add_hydroshare(HS, {}, bag=make_zip({f"{HS}/bagit.txt": b"x", f"{HS}/data/other.txt": b"y"}))
    with pytest.raises(FetchFailed, match="no folder"):
        await fetch_record(f"{datahost.base('hydroshare')}/django_s3/download/bags/{HS}.zip", "hydroshare",
                           tmp_path / "empty")


async def test_a_hydroshare_bag_link_out_of_its_contents_is_refused(datahost: DataHost, tmp_path: Path) -> None:
    """Inside the archive the link stays inside it; once data/contents is the root, it would lead out."""
    bag = make_zip({f"{HS}/bagit.txt": b"x", f"{HS}/data/contents/a.txt": b"a"},
                   links={f"{HS}/data/contents/meta": "../../bagit.txt"})
    datahost.add_hydroshare(HS, {}, bag=bag)
    with pytest.raises(FetchFailed, match="symbolic link leading outside"):
        await fetch_record(f"{datahost.base('hydroshare')}/django_s3/download/bags/{HS}.zip", "hydroshare",
                           tmp_path / "co")


# CKAN: every resource with a URL, named as its URL ends.

async def test_ckan_resources_are_fetched_as_their_urls_name_them(datahost: DataHost, tmp_path: Path) -> None:
    datahost.add_ckan("levels", {"levels.csv": b"a,b\n", "requirements.txt": b"pandas\n"},
                      activities={"act1": ("2026-01-01T00:00:00.000001", {"old.csv": b"old\n"})})
    api = f"{datahost.base('ckan')}/api/3/action"
    await fetch_record(f"{api}/package_show?id=levels", "ckan", tmp_path / "now")
    assert set(tree(tmp_path / "now").values()) == {b"a,b\n", b"pandas\n"}
    assert all(name.startswith("ckan-levels-now-") for name in tree(tmp_path / "now"))
    await fetch_record(f"{api}/activity_data_show?id=act1&object_type=package", "ckan", tmp_path / "then")
    assert list(tree(tmp_path / "then").values()) == [b"old\n"], "the version of that activity"
