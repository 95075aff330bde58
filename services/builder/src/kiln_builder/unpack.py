"""Writing a data repository's files into a checkout: names checked, sizes counted, zips unpacked safely.

A record's file names and its archives' members come from strangers, so they obey the rules git
checkouts do (``fetch.extract_checkout``): relative, no ``..``, no ``.git`` of their own, nothing but
files, folders and links, never written through a link, and within the builder's limits. Links in
an archive must stay inside it (``zipfile`` would write them as plain files; repo2docker does too,
but a link out of the checkout is refused rather than made harmless by accident).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kiln_builder.fetch import CheckoutRefused, FetchPolicy

_MAX_LINK = 4096  # a link target longer than this is not a path anyone meant


def _amount(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB" if n >= 2**10 else f"{n} bytes"


@dataclass
class Budget:
    """What one record may take, from the builder's ``FetchPolicy`` (0: no limit): downloaded, written, entries."""

    policy: FetchPolicy
    fetched: int = 0
    written: int = 0
    entries: int = 0

    def fetch(self, n: int) -> None:
        """Count ``n`` bytes downloaded."""
        self.fetched += n
        limit = self.policy.max_fetch_bytes
        if limit and self.fetched > limit:
            raise CheckoutRefused(f"The record is larger than this Binder fetches ({_amount(limit)}).", "repo_too_large")

    def check_fetch(self, n: int) -> None:
        """Refuse now if ``n`` more bytes would pass the download limit (a server's announced length)."""
        limit = self.policy.max_fetch_bytes
        if limit and self.fetched + n > limit:
            raise CheckoutRefused(f"The record is larger than this Binder fetches ({_amount(limit)}).", "repo_too_large")

    def write(self, n: int) -> None:
        """Count ``n`` bytes of files in the checkout."""
        self.written += n
        limit = self.policy.max_bytes
        if limit and self.written > limit:
            raise CheckoutRefused(f"The record is larger than {_amount(limit)} unpacked; this Binder builds repositories "
                                  "up to that size.", "repo_too_large")

    def entry(self) -> None:
        """Count one file, folder or link in the checkout."""
        self.entries += 1
        limit = self.policy.max_entries
        if limit and self.entries > limit:
            raise CheckoutRefused(f"The record has more than {limit} files and folders; this Binder builds repositories "
                                  "up to that many.", "repo_too_large")


def safe_name(name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside the checkout; CheckoutRefused if it cannot."""
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in name):
        raise CheckoutRefused("The record contains a file name with control characters or backslashes.", "unsafe_repository")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or (path.parts[0].endswith(":") and len(path.parts[0]) == 2):
        raise CheckoutRefused("The record contains a path that leads outside it.", "unsafe_repository")
    if any(part.lower() == ".git" for part in path.parts):
        raise CheckoutRefused("The record contains a .git of its own.", "unsafe_repository")
    return path


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def parent_dir(dest: Path, name: PurePosixPath) -> str:
    """The folder ``name`` goes in under ``dest``, made if missing; CheckoutRefused if a link or file is in the way.

    Folders are made one at a time and none is a link, so nothing is ever written through one.
    """
    current = os.path.realpath(dest)
    for part in name.parts[:-1]:
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise CheckoutRefused("The record contains a path that leads through a symbolic link.", "unsafe_repository")
        if not os.path.isdir(current):
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                raise CheckoutRefused(f"The record contains {name} inside a file.", "unsafe_repository") from None
    return current


def create_file(dest: Path, name: PurePosixPath, executable: bool = False) -> int:
    """A new file at ``name`` under ``dest``, opened for writing: never one that exists, never through a link."""
    target = os.path.join(parent_dir(dest, name), name.parts[-1])
    try:
        return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if executable else 0o644)
    except FileExistsError:
        raise CheckoutRefused(f"The record contains {name} twice.", "unsafe_repository") from None


def _link_stays_inside(name: PurePosixPath, target: str) -> bool:
    if not target or target.startswith("/") or "\0" in target:
        return False
    depth = len(name.parts) - 1
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return False
    return True


def extract_zip(archive: Path, dest: Path, budget: Budget) -> None:
    """Unpack the zip ``archive`` into ``dest``, member by member, refusing anything that could leave it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _extract_member(zf, info, dest, budget)
        _check_links(dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise CheckoutRefused(f"The record's zip archive could not be unpacked ({type(exc).__name__}: {exc}).",
                              "fetch_failed") from None


def extract_tar_gz(archive: Path, dest: Path, budget: Budget) -> None:
    """Unpack the gzipped tar ``archive`` into ``dest`` under the rules zip members obey: folders, files and
    links that stay inside only, every name checked, sizes counted from the headers before writing."""
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                if member.type in (tarfile.XGLTYPE, tarfile.XHDTYPE):
                    continue
                budget.entry()
                name = safe_name(member.name.rstrip("/"))
                target = os.path.join(parent_dir(dest, name), name.parts[-1])
                if member.isdir():
                    if os.path.islink(target) or os.path.exists(target) and not os.path.isdir(target):
                        raise CheckoutRefused(f"The record's archive contains {name} twice.", "unsafe_repository")
                    os.makedirs(target, mode=0o755, exist_ok=True)
                elif member.issym():
                    if len(member.linkname) > _MAX_LINK or not _link_stays_inside(name, member.linkname):
                        raise CheckoutRefused("The record's archive contains a symbolic link leading outside it.",
                                              "unsafe_repository")
                    if os.path.lexists(target):
                        raise CheckoutRefused(f"The record's archive contains {name} twice.", "unsafe_repository")
                    os.symlink(member.linkname, target)
                elif member.isfile():
                    budget.write(member.size)
                    source = tar.extractfile(member)
                    assert source is not None
                    with os.fdopen(create_file(dest, name, executable=bool(member.mode & 0o111)), "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                else:  # hard links, devices, pipes
                    raise CheckoutRefused("The record's archive contains an entry that is not a file, folder or "
                                          "symbolic link.", "unsafe_repository")
        _check_links(dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CheckoutRefused(f"The record's archive could not be unpacked ({type(exc).__name__}).", "fetch_failed") from None


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: Budget) -> None:
    budget.entry()
    name = safe_name(info.filename.rstrip("/") if info.is_dir() else info.filename)
    kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0  # Unix modes only from Unix zips
    if info.is_dir() or kind == stat.S_IFDIR:
        target = os.path.join(parent_dir(dest, name), name.parts[-1])
        if os.path.islink(target) or os.path.exists(target) and not os.path.isdir(target):
            raise CheckoutRefused(f"The record's archive contains {name} twice.", "unsafe_repository")
        os.makedirs(target, mode=0o755, exist_ok=True)
        return
    if kind == stat.S_IFLNK:
        if info.file_size > _MAX_LINK:
            raise CheckoutRefused("The record's archive contains a symbolic link that is not a path.", "unsafe_repository")
        link = zf.read(info).decode(errors="replace")
        if not _link_stays_inside(name, link):
            raise CheckoutRefused("The record's archive contains a symbolic link leading outside it.", "unsafe_repository")
        target = os.path.join(parent_dir(dest, name), name.parts[-1])
        if os.path.lexists(target):
            raise CheckoutRefused(f"The record's archive contains {name} twice.", "unsafe_repository")
        os.symlink(link, target)
        return
    if kind not in (0, stat.S_IFREG):
        raise CheckoutRefused("The record's archive contains an entry that is not a file, folder or link (a device, "
                              "pipe or socket).", "unsafe_repository")
    budget.write(info.file_size)  # the header's size; zipfile stops reading at it and checks the CRC
    fd = create_file(dest, name, executable=bool((info.external_attr >> 16) & 0o111))
    with os.fdopen(fd, "wb") as out, zf.open(info) as source:
        shutil.copyfileobj(source, out, 1 << 20)


def _check_links(dest: Path) -> None:
    """Every link, resolved with all the others in place, stays inside ``dest`` (one at a time they all did,
    but a link made later can lead an earlier one out: ``a -> b/..`` then ``b -> .``)."""
    root = os.path.realpath(dest)
    for folder, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path) and not _inside(root, os.path.realpath(path)):
                raise CheckoutRefused("The record's archive contains a symbolic link leading outside it.", "unsafe_repository")


def hoist_single_folder(dest: Path) -> None:
    """When ``dest`` holds one folder and nothing else, that folder becomes ``dest`` (repo2docker's rule for archives)."""
    entries = list(dest.iterdir())
    if len(entries) != 1 or entries[0].is_symlink() or not entries[0].is_dir():
        return
    keep_folder(dest, PurePosixPath(entries[0].name))


def keep_folder(dest: Path, folder: PurePosixPath) -> None:
    """``dest/folder`` becomes ``dest``; the rest goes. A link that led from the folder to the rest now
    leads out of the checkout, so every link is checked again."""
    inside = dest
    for part in folder.parts:
        inside = inside / part
        if inside.is_symlink() or not inside.is_dir():
            raise CheckoutRefused(f"The record has no folder {folder}.", "fetch_failed")
    aside = dest.with_name(f".{dest.name}-{uuid.uuid4().hex[:8]}")
    dest.rename(aside)
    aside.joinpath(*folder.parts).rename(dest)
    shutil.rmtree(aside)
    _check_links(dest)


def is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive (by its content, as repo2docker's ``is_zipfile``)."""
    return zipfile.is_zipfile(path)
