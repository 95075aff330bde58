"""Writing a data repository's files into a checkout: names checked, sizes counted, zips and tarballs unpacked safely.

A record's file names and its archives' members come from strangers, so they obey the rules git
checkouts do (``fetch.extract_checkout``): relative, no ``..``, no ``.git`` of their own, nothing but
files, folders and links, never written through a link, and within the builder's limits. Links in
an archive must stay inside it (``zipfile`` would write them as plain files; repo2docker does too,
but a link out of the checkout is refused rather than made harmless by accident).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from kiln_builder.fetch import BoundedTarInfo, CheckoutRefused, FetchPolicy

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

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


def _make_dir(dest: Path, name: PurePosixPath) -> None:
    """The archive's folder ``name``: made, or already there as a folder (archives may list one twice)."""
    target = os.path.join(parent_dir(dest, name), name.parts[-1])
    if os.path.islink(target) or os.path.exists(target) and not os.path.isdir(target):
        raise CheckoutRefused(f"The record's archive contains {name} twice.", "unsafe_repository")
    os.makedirs(target, mode=0o755, exist_ok=True)


def _check_link_size(size: int) -> None:
    if size > _MAX_LINK:
        raise CheckoutRefused("The record's archive contains a symbolic link that is not a path.", "unsafe_repository")


def _make_link(dest: Path, name: PurePosixPath, link: str) -> None:
    """The archive's symbolic link ``name`` -> ``link``, only if it stays inside the archive."""
    _check_link_size(len(link))
    if not _link_stays_inside(name, link):
        raise CheckoutRefused("The record's archive contains a symbolic link leading outside it.", "unsafe_repository")
    target = os.path.join(parent_dir(dest, name), name.parts[-1])
    if os.path.lexists(target):
        raise CheckoutRefused(f"The record's archive contains {name} twice.", "unsafe_repository")
    os.symlink(link, target)


def _write_file(dest: Path, name: PurePosixPath, size: int, executable: bool, source: IO[bytes], budget: Budget) -> None:
    """The archive's file ``name``: its header's ``size`` counted first, and no more read (both readers stop there)."""
    budget.write(size)
    fd = create_file(dest, name, executable=executable)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _special() -> CheckoutRefused:
    return CheckoutRefused("The record's archive contains an entry that is not a file, folder or link (a device, "
                           "pipe, socket or hard link).", "unsafe_repository")


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: Budget) -> None:
    budget.entry()
    name = safe_name(info.filename.rstrip("/") if info.is_dir() else info.filename)
    kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0  # Unix modes only from Unix zips
    if info.is_dir() or kind == stat.S_IFDIR:
        return _make_dir(dest, name)
    if kind == stat.S_IFLNK:
        _check_link_size(info.file_size)  # before it is read into memory
        return _make_link(dest, name, zf.read(info).decode(errors="replace"))
    if kind not in (0, stat.S_IFREG):
        raise _special()
    with zf.open(info) as source:  # zipfile stops at the header's size and checks the CRC
        _write_file(dest, name, info.file_size, bool((info.external_attr >> 16) & 0o111), source, budget)


class _Capped(io.RawIOBase):
    """A decompressed stream that stops past ``cap`` bytes: tar headers are not counted as files are, and
    tarfile reads a pax header whole into memory, so a few KiB of gzip could otherwise ask for gigabytes."""

    def __init__(self, raw: gzip.GzipFile, cap: int) -> None:
        self._raw = raw
        self._cap = cap
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        self._read += len(data)
        if self._cap and self._read > self._cap:
            raise CheckoutRefused(f"The record's archive unpacks to more than {_amount(self._cap)} of files and headers.",
                                  "repo_too_large")
        view[: len(data)] = data
        return len(data)


def extract_tar(archive: Path, dest: Path, budget: Budget) -> None:
    """Unpack the gzipped tar ``archive`` into ``dest``, member by member, under the rules zips obey.

    Read as a stream (no seeking back, one pass), never with ``extractall``: every member is checked
    as it comes, files are counted from their headers before they are written, and the whole
    decompressed stream is capped at twice ``max_bytes`` plus 16 MiB (room for every header and its
    padding in an honest archive within the limits).
    """
    limit = budget.policy.max_bytes
    cap = 2 * limit + 16 * 2**20 if limit else 0
    try:
        with gzip.open(archive, "rb") as unzipped, _Capped(unzipped, cap) as stream, \
                tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo) as tar:
            for member in tar:
                _extract_tar_member(tar, member, dest, budget)
        _check_links(dest)
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise CheckoutRefused(f"The record's tar archive could not be unpacked ({type(exc).__name__}: {exc}).",
                              "fetch_failed") from None


def _extract_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, budget: Budget) -> None:
    budget.entry()
    name = safe_name(member.name.rstrip("/"))
    if member.isdir():
        return _make_dir(dest, name)
    if member.issym():
        return _make_link(dest, name, member.linkname)
    if not member.isfile():  # hard links (which could name any path), devices, pipes
        raise _special()
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has a reader
    _write_file(dest, name, member.size, bool(member.mode & 0o111), source, budget)


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


def hoist_named_folder(dest: Path, names: Collection[str]) -> None:
    """Make the archive's one top folder, which must be named one of ``names``, the checkout root.

    An archive laid out otherwise is not what the service promised (the Software Heritage vault puts
    the directory in one folder named by its SWHID), so it is refused rather than built as it lies.
    """
    entries = list(dest.iterdir())
    if len(entries) != 1 or entries[0].name not in names or entries[0].is_symlink() or not entries[0].is_dir():
        found = ", ".join(sorted(e.name for e in entries)[:5]) or "nothing"
        raise CheckoutRefused(f"The archive should hold one folder, {next(iter(names), '')}, and holds {found}.",
                              "fetch_failed")
    hoist_single_folder(dest)


def is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive (by its content, as repo2docker's ``is_zipfile``)."""
    return zipfile.is_zipfile(path)
