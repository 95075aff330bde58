"""A repository with Git LFS files, built for real: the image holds the files, and git in it sees
its checkout as clean (the base image's git-lfs reads the files back as the pointers in the index).
The LFS server is the loopback git host's stand-in (tests/support/githost.py)."""

from __future__ import annotations

import hashlib
import os

import pytest

from kilnbus import Phase

from .conftest import BuildHarness, run_in

pytestmark = [pytest.mark.docker, pytest.mark.kafka, pytest.mark.asyncio(loop_scope="module")]


async def test_lfs_files_are_in_the_image_and_git_status_is_clean(builder: BuildHarness) -> None:
    data = os.urandom(50_000).hex().encode()
    oid = hashlib.sha256(data).hexdigest()
    builder.githost.lfs.objects[oid] = data
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
    url, ref = builder.serve_repo("lfs", {".gitattributes": "*.csv filter=lfs diff=lfs merge=lfs -text\n",
                                          "data/table.csv": pointer, "requirements.txt": ""})
    rid, image = await builder.request(url, ref)
    outcome = await builder.outcome(rid)
    assert outcome.phase is Phase.BUILT, f"{outcome.message}\n{builder.log(rid)[-3000:]}"
    assert "Git LFS: 1 file(s)" in builder.log(rid)
    assert run_in(image, "sha256sum < ~/data/table.csv | cut -d' ' -f1") == oid
    assert run_in(image, "cd ~ && git status --porcelain --untracked-files=no && git lfs ls-files --name-only") == "data/table.csv"
