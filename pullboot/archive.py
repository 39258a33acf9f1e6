"""Safe extraction of bundles (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz, .zip).

The contract, on every supported Python (it does not use, and so does not depend on,
tarfile's extraction filters, which Debian 12's 3.11.2 lacks):

* Headers are bounded before tarfile reads them: a GNU long name/link or pax header larger
  than :data:`MAX_HEADER`, more than :data:`MAX_HEADER_CHAIN` such headers in a row, a
  negative size and sparse members are refused, so a hostile header costs at most a few
  times ``MAX_HEADER`` of memory.
* Every member is checked *before* anything is written, against a model of the tree the
  bundle will leave (its members so far, over what ``dest`` already holds from an earlier
  bundle): absolute names, ``..``, names longer than :data:`MAX_NAME` or not UTF-8, devices,
  FIFOs, a member under a link or a file, a directory replaced by something else, duplicate
  members, hard links to anything but a regular file of the tree, and symlinks whose target,
  resolved through the tree's links (including links that come later in the bundle), leaves
  the tree. Member count and declared size are capped while the headers stream by.
* Writes never follow a link: directories are walked with ``O_NOFOLLOW`` dir fds, files are
  created with ``O_EXCL | O_NOFOLLOW``; the bytes actually written are capped too. Modes are
  reduced as tarfile's ``data`` filter would (no set-id bits, no group/other write); nothing
  is chowned.

Any refusal raises IntegrityError. The caller extracts into a staging dir it deletes on
failure, so a refused bundle leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final, Literal, NoReturn

from pullboot.errors import IntegrityError

MAX_BYTES: Final = 1 << 30
MAX_MEMBERS: Final = 100_000
MAX_NAME: Final = 4096  # PATH_MAX: the longest member name or link target
MAX_NAMES_TOTAL: Final = 32 << 20  # all names and targets together
MAX_HEADER: Final = 64 << 10  # largest GNU long-name/long-link or pax header
MAX_HEADER_CHAIN: Final = 8  # extended headers in a row before one member
_LINK_HOPS: Final = 40  # the kernel's MAXSYMLINKS
_CHUNK: Final = 1 << 16
# GNU long name/link, pax, pax global, Solaris pax: headers describing the next member.
_EXTENDED: Final = frozenset({b"L", b"K", b"x", b"g", b"X"})
_LINK_HINT: Final = "use relative links that stay inside the bundle"
_BUILD_HINT: Final = "build the bundle with `tar -C dir .` from a plain directory tree"

Kind = Literal["dir", "file", "link", "hard"]


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
    """Refuse absolute, ``..``, over-long and non-UTF-8 names; return the relative path."""
    path = PurePosixPath(member)
    if member.startswith(("/", "\\")) or path.is_absolute() or (
            len(member) > 1 and member[1] == ":"):
        raise IntegrityError(f"bundle {bundle!r} has an absolute member {member!r}",
                             hint="build the bundle with relative paths (tar -C dir .)")
    if ".." in path.parts:
        raise IntegrityError(f"bundle {bundle!r} has a member escaping the tree: {member!r}",
                             hint="remove '..' from member paths")
    _check_text(member, bundle, "member name")
    return path


def _check_text(text: str, bundle: str, what: str) -> None:
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # tarfile decodes with surrogateescape
        raise IntegrityError(f"bundle {bundle!r} has a {what} that is not UTF-8: {text!r}",
                             hint="rename it: reports and ansible carry only UTF-8 "
                             "names") from None
    if size > MAX_NAME or "\0" in text:
        raise IntegrityError(f"bundle {bundle!r} has a {what} of {size} bytes (limit "
                             f"{MAX_NAME}): {text[:64]!r}...", hint="shorten the path")


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split("/") if p not in ("", "."))


# -- tar headers -------------------------------------------------------------------------


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo whose extended headers are size- and count-checked before they are read.

    tarfile reads a GNU long name or a pax header whole into memory (and a chain of them
    recursively); a negative size makes it loop. These are refused here, on the header
    block's own fields, before tarfile reads what follows.
    """

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size < 0:
            raise IntegrityError(f"tar header of {self.name[:64]!r} has a negative size",
                                 hint=_BUILD_HINT)
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise IntegrityError(f"bundle member {self.name[:64]!r} is a sparse file",
                                 hint=_BUILD_HINT + " (without --sparse)")
        parent = tarfile.TarInfo._proc_member  # type: ignore[attr-defined]
        if self.type not in _EXTENDED:
            return parent(self, tar)  # type: ignore[no-any-return]
        member: tarfile.TarInfo = self._proc_extended(tar, parent)
        if member.size < 0:  # a pax "size" record, applied after the block was read
            raise IntegrityError(f"tar header of {member.name[:64]!r} has a negative size",
                                 hint=_BUILD_HINT)
        return member

    def _proc_extended(self, tar: tarfile.TarFile, parent: Any) -> tarfile.TarInfo:
        if self.size > MAX_HEADER:
            raise IntegrityError(f"tar extended header of {self.size} bytes (limit "
                                 f"{MAX_HEADER})", hint=_BUILD_HINT)
        depth: int = getattr(tar, "_pullboot_chain", 0) + 1
        if depth > MAX_HEADER_CHAIN:
            raise IntegrityError(f"more than {MAX_HEADER_CHAIN} tar extended headers in a "
                                 "row", hint=_BUILD_HINT)
        tar._pullboot_chain = depth  # type: ignore[attr-defined]
        try:
            return parent(self, tar)  # type: ignore[no-any-return]
        finally:
            tar._pullboot_chain = depth - 1  # type: ignore[attr-defined]

    def _refuse_sparse(self, *_args: object) -> None:
        raise IntegrityError(f"bundle member {self.name[:64]!r} is a sparse file",
                             hint=_BUILD_HINT + " (without --sparse)")

    # pax-described sparse files: their maps are unbounded lists (or loops) in tarfile.
    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


# -- the model of the tree ---------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """One member, format-independent: what to create at ``parts``."""

    name: str
    parts: tuple[str, ...]
    kind: Kind
    target: str = ""  # link target (symlink: relative to the link's dir; hard: to the root)
    size: int = 0
    mode: int = 0o644


class _Outside(Exception):
    """A path resolved through the tree's links leaves the tree (or loops)."""


class _Plan:
    """The tree a bundle will leave in ``dest``: its members so far, over what dest holds.

    Links are resolved among these entries, never by asking the kernel to follow one.
    """

    def __init__(self, dest: Path, bundle: str, limits: Limits) -> None:
        self.dest, self.bundle, self.limits = dest, bundle, limits
        self.nodes: dict[tuple[str, ...], tuple[Kind, str]] = {}
        self.members: set[tuple[str, ...]] = set()
        self.count = self.size = self.name_bytes = 0
        self.on_disk = dest.is_dir() and any(dest.iterdir())  # an earlier bundle's tree

    def lookup(self, parts: tuple[str, ...]) -> tuple[Kind, str] | None:
        if parts in self.nodes:
            return self.nodes[parts]
        if not self.on_disk:
            return None
        # Every prefix of ``parts`` resolved to a directory, so lstat follows no link.
        try:
            st = os.lstat(self.dest.joinpath(*parts))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISDIR(st.st_mode):
            return ("dir", "")
        if stat.S_ISLNK(st.st_mode):
            return ("link", os.readlink(self.dest.joinpath(*parts)))
        return ("file", "")

    def resolve(self, path: Sequence[str]) -> tuple[str, ...]:
        """The link-free path ``path`` names in the tree; raises _Outside."""
        done: list[str] = []
        todo = list(reversed(path))
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    raise _Outside
                done.pop()
                continue
            done.append(part)
            node = self.lookup(tuple(done))
            if node is not None and node[0] == "link":
                hops += 1
                if hops > _LINK_HOPS or node[1].startswith("/"):
                    raise _Outside
                done.pop()
                todo.extend(reversed(node[1].split("/")))
        return tuple(done)

    def add(self, m: _Member) -> _Member:
        """Check ``m`` against the tree so far and record it; raise IntegrityError if unsafe."""
        self._count(m)
        for i in range(1, len(m.parts)):
            prefix = m.parts[:i]
            node = self.lookup(prefix)
            if node is None:
                self.nodes[prefix] = ("dir", "")
            elif node[0] != "dir":
                self._refuse(f"member {m.name!r} lies under the {_what(node[0])} "
                             f"{'/'.join(prefix)!r}", _BUILD_HINT)
        if not m.parts:
            if m.kind != "dir":
                self._refuse(f"member {m.name!r} would replace the bundle's root", _BUILD_HINT)
            return m
        self._check_replace(m)
        if m.kind == "link":
            self._check_symlink(m.parts, m.target, m.name)
        elif m.kind == "hard":
            self._check_hardlink(m)
        self.nodes[m.parts] = ("link" if m.kind == "link" else
                               "file" if m.kind == "hard" else m.kind, m.target)
        self.members.add(m.parts)
        return m

    def finish(self) -> None:
        """Re-check every link against the final tree: a later link can move an earlier one."""
        for parts, (kind, target) in list(self.nodes.items()):
            if kind == "link":
                self._check_symlink(parts, target, "/".join(parts))
        if self.on_disk:
            for dirpath, dirnames, filenames in os.walk(self.dest):
                for entry in (*dirnames, *filenames):
                    path = Path(dirpath, entry)
                    parts = path.relative_to(self.dest).parts
                    if path.is_symlink() and parts not in self.nodes:
                        self._check_symlink(parts, os.readlink(path), "/".join(parts))

    def _count(self, m: _Member) -> None:
        self.count += 1
        self.size += m.size if m.kind == "file" else 0
        self.name_bytes += len(m.name) + len(m.target)
        if self.count > self.limits.max_members:
            # Counted as the headers stream by: a bomb is not read to its end.
            self._refuse(f"has more than {self.limits.max_members} members",
                         "raise s3.max_members or shrink the bundle")
        if self.size > self.limits.max_bytes:
            self._refuse(f"expands to {self.size} bytes (limit {self.limits.max_bytes})",
                         "raise s3.max_bytes or shrink the bundle")
        if self.name_bytes > MAX_NAMES_TOTAL:
            self._refuse(f"has more than {MAX_NAMES_TOTAL} bytes of member names",
                         "shrink the bundle")

    def _check_replace(self, m: _Member) -> None:
        old = self.lookup(m.parts)
        if old is None or (old[0] == "dir" and m.kind == "dir"):
            return
        if old[0] == "dir" or m.kind == "dir":
            self._refuse(f"member {m.name!r} would replace a {_what(old[0])} with a "
                         f"{_what(m.kind)}", _BUILD_HINT)
        if m.parts in self.members:
            self._refuse(f"member {m.name!r} appears twice", _BUILD_HINT + " (no tar -r)")

    def _check_symlink(self, parts: tuple[str, ...], target: str, name: str) -> None:
        try:
            if not target or target.startswith("/"):
                raise _Outside
            self.resolve([*parts[:-1], *target.split("/")])
        except _Outside:
            self._refuse(f"link {name!r} points outside the tree ({target!r})", _LINK_HINT)

    def _check_hardlink(self, m: _Member) -> None:
        target = _parts(m.target)
        try:
            if m.target.startswith("/") or ".." in target or not target:
                raise _Outside
            real = self.resolve(target)
        except _Outside:
            self._refuse(f"link {m.name!r} points outside the tree ({m.target!r})",
                         _LINK_HINT)
        node = self.lookup(real)
        if real != target or node is None or node[0] != "file":
            self._refuse(f"hard link {m.name!r} does not name a regular file earlier in the "
                         f"bundle ({m.target!r})", _LINK_HINT)

    def _refuse(self, what: str, hint: str) -> NoReturn:
        raise IntegrityError(f"bundle {self.bundle!r} {what}", hint=hint)


def _what(kind: Kind) -> str:
    return {"dir": "directory", "file": "file", "link": "link", "hard": "hard link"}[kind]


# -- writing without following links ---------------------------------------------------


class _Writer:
    """Creates members under ``dest`` through dir fds; never follows a link, never overwrites
    a directory. The plan has already refused all of that: this is the second line."""

    def __init__(self, dest: Path, bundle: str, limits: Limits) -> None:
        self.bundle, self.limits, self.budget = bundle, limits, limits.max_bytes
        dest.mkdir(parents=True, exist_ok=True)
        self.root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.root)

    @contextmanager
    def _dir(self, parts: Sequence[str]) -> Iterator[int]:
        """An fd for the directory ``parts`` (created 0o755 as needed), opened link by link."""
        fd = os.dup(self.root)
        try:
            for part in parts:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise IntegrityError(f"bundle {self.bundle!r}: {'/'.join(parts)!r} is "
                                         "not a directory", hint=_BUILD_HINT) from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def write(self, m: _Member, data: IO[bytes] | None) -> None:
        if m.kind == "dir":
            with self._dir(m.parts):
                return
        with self._dir(m.parts[:-1]) as parent:
            name = m.parts[-1]
            self._clear(parent, name, m.name)
            if m.kind == "link":
                os.symlink(m.target, name, dir_fd=parent)
            elif m.kind == "hard":
                target = _parts(m.target)
                with self._dir(target[:-1]) as src:
                    os.link(target[-1], name, src_dir_fd=src, dst_dir_fd=parent,
                            follow_symlinks=False)
            else:
                self._write_file(parent, name, m, data)

    def _clear(self, parent: int, name: str, member: str) -> None:
        """Remove a non-directory an earlier bundle left at ``name``."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise IntegrityError(f"bundle {self.bundle!r}: member {member!r} would replace a "
                                 "directory", hint=_BUILD_HINT)
        os.unlink(name, dir_fd=parent)

    def _write_file(self, parent: int, name: str, m: _Member, data: IO[bytes] | None) -> None:
        # As tarfile's "data" filter: no set-id/sticky bits, no group/other write, owner rw.
        mode = (m.mode & 0o755) | 0o600
        if not m.mode & stat.S_IXUSR:
            mode &= ~0o111
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            while data is not None and (chunk := data.read(_CHUNK)):
                # Declared sizes can lie (zip): count what actually comes out.
                self.budget -= len(chunk)
                if self.budget < 0:
                    raise IntegrityError(f"bundle {self.bundle!r} expands beyond "
                                         f"{self.limits.max_bytes} bytes",
                                         hint="raise s3.max_bytes or shrink the bundle")
                out.write(chunk)
            os.fchmod(out.fileno(), mode)


# -- formats -------------------------------------------------------------------------------


def _from_tar(info: tarfile.TarInfo, bundle: str) -> _Member:
    name = info.name
    check_member_name(name, bundle)
    kind: Kind
    if info.isdir():
        kind = "dir"
    elif info.issym():
        kind = "link"
    elif info.islnk():
        kind = "hard"
    elif info.isfile():
        kind = "file"
    else:
        raise IntegrityError(f"bundle {bundle!r} has a device or special file {name!r}",
                             hint="bundles may hold files, dirs, links")
    if kind in ("link", "hard"):
        _check_text(info.linkname, bundle, "link target")
    return _Member(name, _parts(name), kind, info.linkname, info.size, info.mode)


def _extract_tar(archive: Path, dest: Path, bundle: str, limits: Limits) -> None:
    with tarfile.open(archive, "r:*", tarinfo=_BoundedTarInfo) as tar:
        plan = _Plan(dest, bundle, limits)
        members: list[tuple[_Member, tarfile.TarInfo]] = []
        while (info := tar.next()) is not None:
            members.append((plan.add(_from_tar(info, bundle)), info))
        plan.finish()
        writer = _Writer(dest, bundle, limits)
        try:
            for member, info in members:
                data = tar.extractfile(info) if member.kind == "file" else None
                writer.write(member, data)
        finally:
            writer.close()


def _from_zip(info: zipfile.ZipInfo, bundle: str) -> _Member:
    name = info.filename
    check_member_name(name, bundle)
    mode = info.external_attr >> 16
    # Some writers store permission bits without a file type: that is a file.
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise IntegrityError(f"bundle {bundle!r} has a link or special file {name!r}",
                             hint="zip bundles may hold only files and dirs; use .tar.gz "
                             "for links")
    kind: Kind = "dir" if info.is_dir() or stat.S_ISDIR(mode) else "file"
    return _Member(name, _parts(name), kind, size=info.file_size,
                   mode=stat.S_IMODE(mode) or 0o644)


def _extract_zip(archive: Path, dest: Path, bundle: str, limits: Limits) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()  # the central directory: bounded by the file's size
        if len(infos) > limits.max_members:
            raise IntegrityError(f"bundle {bundle!r} has {len(infos)} members (limit "
                                 f"{limits.max_members})", hint="raise the limit or shrink it")
        plan = _Plan(dest, bundle, limits)
        members = [(plan.add(_from_zip(info, bundle)), info) for info in infos]
        plan.finish()
        writer = _Writer(dest, bundle, limits)
        try:
            for member, info in members:
                if member.kind == "dir":
                    writer.write(member, None)
                    continue
                with zf.open(info) as data:
                    writer.write(member, data)
        finally:
            writer.close()
