"""Git LFS files in the checkout, fetched as ``git lfs pull`` would and under the same rules as git.

Real repositories made here hold real LFS pointer files (the format git-lfs writes) and a
``.gitattributes`` routing them through the LFS filter; the loopback git host's LFS stand-in
(tests/support/githost.py: the batch API and object downloads, standing in for GitHub's LFS server)
serves the objects. The builder's own ``fetch`` checks them out.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from kiln_builder.errors import FetchFailed

from ..support.githost import GitHost
from .conftest import make_hostile_repo
from .test_hostile_repos import checkout

ATTRIBUTES = "*.bin filter=lfs diff=lfs merge=lfs -text\n"


def pointer(data: bytes) -> str:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n"


def lfs_repo(host: GitHost, name: str, objects: dict[str, bytes], serve: bool = True) -> tuple[str, str]:
    if serve:
        host.lfs.objects.update({hashlib.sha256(d).hexdigest(): d for d in objects.values()})
    files: dict[str, str | bytes] = {".gitattributes": ATTRIBUTES, "README.md": "data below\n",
                                     **{path: pointer(data) for path, data in objects.items()}}
    return make_hostile_repo(host, name, files)


async def test_lfs_files_replace_their_pointers_and_a_rebuild_downloads_nothing(githost: GitHost, tmp_path: Path) -> None:
    big, small = os.urandom(300_000), b"a small LFS file\n"
    url, ref = lfs_repo(githost, "lfs", {"data/big.bin": big, "small.bin": small, "copy.bin": small})
    dest, lines = await checkout(url, ref, tmp_path)
    assert (dest / "data" / "big.bin").read_bytes() == big
    assert (dest / "small.bin").read_bytes() == small and (dest / "copy.bin").read_bytes() == small
    assert (dest / "README.md").read_text() == "data below\n"
    assert any("Git LFS: 3 file(s)" in line for line in lines), lines
    assert githost.lfs.batches[0]["operation"] == "download"
    assert sorted(githost.lfs.downloads) == sorted({hashlib.sha256(d).hexdigest() for d in (big, small)}), \
        "each object downloaded once, even when two files point at it"
    # git still sees the pointers in its index (the image's git-lfs makes `git status` agree).
    show = subprocess.run(["git", "-C", str(dest), "show", f"{ref}:small.bin"], capture_output=True, text=True, check=True)
    assert show.stdout == pointer(small)
    # Again (a rebuild): the objects come from the builder's cache.
    githost.lfs.downloads.clear()
    dest, _ = await checkout(url, ref, tmp_path)
    assert (dest / "data" / "big.bin").read_bytes() == big and githost.lfs.downloads == []


async def test_without_lfs_attributes_pointer_text_is_left_alone(githost: GitHost, tmp_path: Path) -> None:
    # A file that happens to read like a pointer, in a repository that does not use LFS, is its own content.
    url, ref = make_hostile_repo(githost, "not-lfs", {"looks.bin": pointer(b"whatever")})
    dest, _ = await checkout(url, ref, tmp_path)
    assert (dest / "looks.bin").read_text() == pointer(b"whatever") and githost.lfs.batches == []


async def test_an_object_the_server_lacks_fails_naming_the_file(githost: GitHost, tmp_path: Path) -> None:
    url, ref = lfs_repo(githost, "lfs-missing", {"gone.bin": b"never uploaded\n"}, serve=False)
    with pytest.raises(FetchFailed, match=r"cannot give gone\.bin: Object does not exist") as e:
        await checkout(url, ref, tmp_path)
    assert e.value.cause == "fetch_failed"
    assert not (tmp_path / "checkout").exists(), "no checkout with pointers where files should be"


async def test_content_that_does_not_match_its_pointer_is_refused(githost: GitHost, tmp_path: Path) -> None:
    data = b"the real content\n"
    url, ref = lfs_repo(githost, "lfs-tampered", {"x.bin": data})
    githost.lfs.tamper[hashlib.sha256(data).hexdigest()] = b"the fake content\n"  # same size, other bytes
    with pytest.raises(FetchFailed, match=r"x\.bin content that does not match its pointer"):
        await checkout(url, ref, tmp_path)


@pytest.mark.parametrize(("href_base", "cause"), [
    ("http://169.254.169.254/latest/meta-data", "private_host"),  # the metadata service: refused, never contacted
    ("http://10.0.0.1/objects", "private_host"), ("http://[::1]:9/objects", "private_host"),
    ("file:///etc", "banned"), ("http://user:pw@127.0.0.1:9/objects", "credentials_in_url"),
])
async def test_download_links_obey_the_url_guard(githost: GitHost, tmp_path: Path, href_base: str, cause: str) -> None:
    url, ref = lfs_repo(githost, "lfs-ssrf", {"x.bin": b"content\n"})
    githost.lfs.href_base = href_base
    with pytest.raises(FetchFailed, match="^Git LFS: ") as e:
        await checkout(url, ref, tmp_path)
    assert e.value.cause == cause and githost.lfs.downloads == []


async def test_lfs_files_count_against_the_checkout_size_before_any_download(githost: GitHost, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    url, ref = lfs_repo(githost, "lfs-big", {"a.bin": data, "b.bin": data + b"!"})
    with pytest.raises(FetchFailed) as e:
        await checkout(url, ref, tmp_path, max_bytes=300_000)
    assert e.value.cause == "repo_too_large" and githost.lfs.batches == [] and githost.lfs.downloads == []
    # Control: the same repository within the limit.
    dest, _ = await checkout(url, ref, tmp_path, max_bytes=500_000)
    assert (dest / "b.bin").read_bytes() == data + b"!"


async def test_cached_objects_are_kept_per_lfs_server(githost: GitHost, tmp_path: Path) -> None:
    """Knowing an object's hash is not enough to get it: another server's cached copy is not handed out."""
    secret = b"a file from another repository's LFS server\n"
    url, ref = lfs_repo(githost, "lfs-owner", {"s.bin": secret})
    await checkout(url, ref, tmp_path)  # now in the cache, under that repository's LFS server
    githost.lfs.objects.clear()
    other = make_hostile_repo(githost, "lfs-curious", {".gitattributes": ATTRIBUTES, "s.bin": pointer(secret)})
    # Same host, other repository: another LFS endpoint, so asked for anew (and refused by the server).
    with pytest.raises(FetchFailed, match="Object does not exist"):
        await checkout(*other, tmp_path)
