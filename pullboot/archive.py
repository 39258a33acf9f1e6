"""Safe extraction of bundles (.tar, .tar.gz, .tgz, .zip).

Every member is checked *before* anything is written: absolute names, ``..``
components, links that point outside the tree, hard links to outside,
devices, FIFOs and oversize content are refused with IntegrityError. The
caller extracts into a staging dir it deletes on failure, so a refused bundle
leaves nothing behind. tarfile's ``data`` filter is applied as well, as a
second line of defence.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from pullboot.errors import IntegrityError

MAX_BYTES: Final = 1 << 30
MAX_MEMBERS: Final = 100_000


@dataclass(frozen=True)
class Limits:
    """Caps against decompression bombs."""

    max_bytes: int = MAX_BYTES
    max_members: int = MAX_MEMBERS


def extract(archive: Path, dest: Path, *, name: str, limits: Limits = Limits()) -> None:
    """Extract ``archive`` into ``dest``; ``name`` (the bundle's key) picks the format."""
    lowered = name.lower()
    try:
        if lowered.endswith(".zip"):
            _extract_zip(archive, dest, name, limits)
        elif lowered.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
            _extract_tar(archive, dest, name, limits)
        else:
            raise IntegrityError(f"bundle {name!r} is not a .tar.gz, .tgz, .tar or .zip",
                                 hint="publish the bundle as .tar.gz or .zip")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        if isinstance(exc, IntegrityError):
            raise
        raise IntegrityError(f"bundle {name!r} is corrupt or truncated: {exc}",
                             hint="re-upload the bundle; check the producer's build") from None


def check_member_name(member: str, bundle: str) -> PurePosixPath:
    """Refuse absolute names and ``..``; return the normalised relative path."""
    path = PurePosixPath(member)
    if member.startswith(("/", "\\")) or path.is_absolute() or (
            len(member) > 1 and member[1] == ":"):
        raise IntegrityError(f"bundle {bundle!r} has an absolute member {member!r}",
                             hint="build the bundle with relative paths (tar -C dir .)")
    if ".." in path.parts:
        raise IntegrityError(f"bundle {bundle!r} has a member escaping the tree: {member!r}",
                             hint="remove '..' from member paths")
    return path


def _check_link(member: str, target: str, bundle: str, *, hard: bool) -> None:
    if target.startswith("/") or (hard and ".." in PurePosixPath(target).parts):
        raise IntegrityError(f"bundle {bundle!r}: link {member!r} points outside the tree "
                             f"({target!r})", hint="use relative links inside the bundle")
    base = PurePosixPath() if hard else PurePosixPath(member).parent
    depth = 0
    for part in (base / target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise IntegrityError(f"bundle {bundle!r}: link {member!r} points outside the "
                                 f"tree ({target!r})", hint="use relative links inside the bundle")


def _extract_tar(archive: Path, dest: Path, bundle: str, limits: Limits) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        _check_counts(len(members), sum(m.size for m in members if m.isfile()), bundle, limits)
        for m in members:
            check_member_name(m.name, bundle)
            if m.issym():
                _check_link(m.name, m.linkname, bundle, hard=False)
            elif m.islnk():
                _check_link(m.name, m.linkname, bundle, hard=True)
            elif not (m.isfile() or m.isdir()):
                raise IntegrityError(f"bundle {bundle!r} has a device or special file "
                                     f"{m.name!r}", hint="bundles may hold files, dirs, links")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
            return
        # Python before 3.11.4 (Debian 12's python3 is 3.11.2) has no extraction filters: the
        # checks above are the defence, plus what the "data" filter would also do to modes
        # and owners (no set-id bits, no group/other write, owned by whoever extracts).
        for m in members:
            m.mode &= 0o755
            m.uid = m.gid = os.getuid()
            m.uname = m.gname = ""
        tar.extractall(dest, members=members)  # noqa: S202 - members checked above


def _extract_zip(archive: Path, dest: Path, bundle: str, limits: Limits) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_counts(len(infos), sum(i.file_size for i in infos), bundle, limits)
        for info in infos:
            check_member_name(info.filename, bundle)
            mode = info.external_attr >> 16
            # Some writers store permission bits without a file type: that is a file.
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise IntegrityError(f"bundle {bundle!r} has a link or special file "
                                     f"{info.filename!r}", hint="zip bundles may hold only "
                                     "files and dirs; use .tar.gz for links")
        budget = limits.max_bytes
        for info in infos:
            # Declared sizes can lie: count what actually comes out.
            target = dest / check_member_name(info.filename, bundle)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                while chunk := src.read(1 << 16):
                    budget -= len(chunk)
                    if budget < 0:
                        raise IntegrityError(f"bundle {bundle!r} expands beyond "
                                             f"{limits.max_bytes} bytes",
                                             hint="raise s3.max_bytes or shrink the bundle")
                    out.write(chunk)


def _check_counts(members: int, size: int, bundle: str, limits: Limits) -> None:
    if members > limits.max_members:
        raise IntegrityError(f"bundle {bundle!r} has {members} members (limit "
                             f"{limits.max_members})", hint="raise the limit or shrink it")
    if size > limits.max_bytes:
        raise IntegrityError(f"bundle {bundle!r} expands to {size} bytes (limit "
                             f"{limits.max_bytes})", hint="raise the limit or shrink it")
