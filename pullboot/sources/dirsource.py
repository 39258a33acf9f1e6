"""A local directory (``/path`` or ``file:///path``); revision = a content hash.

Only regular files, directories and symlinks are taken: a FIFO or a device would block the
hash or the copy forever (or never end), a socket cannot be copied, so any of them is refused
with a SourceError naming it. Names must be UTF-8: reports, events and ansible carry only
text, so a name that is not (``os.fsdecode``'s surrogates) is refused the same way.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from pullboot.errors import Canceled, SourceError
from pullboot.sources.base import Source, register

# Version control, virtualenvs and tool caches are not part of the tree we run
# (a checkout's .mypy_cache alone can be tens of MB per release).
_SKIP = frozenset({".git", ".hg", ".svn", "__pycache__", ".molecule", ".venv", ".tox",
                   ".mypy_cache", ".ruff_cache", ".pytest_cache", "node_modules"})
# O_NONBLOCK: opening a FIFO that replaced a file since we looked must not wait for a writer.
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@register
class DirSource(Source):
    """Copies a directory; its revision changes whenever any file's content or name does."""

    kind = "dir"

    @property
    def path(self) -> Path:
        url = self.spec.url
        if url.startswith("file://"):
            return Path(unquote(urlsplit(url).path))
        return Path(url).expanduser().absolute()

    def fetch(self) -> str:
        root = self.path
        if not root.is_dir():
            raise SourceError(f"source directory {root} does not exist",
                              hint="check --source / the 'source' setting")
        digest = hashlib.sha256()
        for path in sorted(_walk(root)):
            self._check_deadline(root)
            rel = path.relative_to(root).as_posix()
            digest.update(rel.encode() + b"\0")
            if path.is_symlink():
                target = os.readlink(path)
                _check_name(root, rel, target, what="link target")
                digest.update(b"L" + target.encode())
            else:
                digest.update(b"F" + _file_hash(root, path))
        return "sha256:" + digest.hexdigest()[:32]

    def remote_revision(self) -> str:
        return self.fetch()  # hashing is the cheapest honest answer for a directory

    def _check_deadline(self, root: Path) -> None:
        """A huge directory is bounded by the fetch's deadline like any other source."""
        if self.deadline.canceled():
            raise Canceled(f"canceled by a signal while reading {root}")
        if self.deadline.expired():
            raise SourceError(f"source directory {root} was not read within the fetch's "
                              "deadline (fetch.retry_budget)",
                              hint="point the source at the playbook tree itself, or raise "
                              "fetch.retry_budget")

    def export(self, dest: Path) -> None:
        root = self.path

        def copy(src: str, dst: str) -> str:
            self._check_deadline(root)
            with _open_regular(root, Path(src)) as fin, open(dst, "xb") as fout:
                shutil.copyfileobj(fin, fout)
            shutil.copystat(src, dst)
            return dst

        shutil.copytree(root, dest, symlinks=True, dirs_exist_ok=True, copy_function=copy,
                        ignore=lambda _d, names: [n for n in names if n in _SKIP])


def _walk(root: Path) -> list[Path]:
    """Every file and link under ``root`` (not under _SKIP); refuses what we cannot take."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP]
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            _check_name(root, rel, rel, what="file name")
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                out.append(path)  # a link to a dir is listed in dirnames, not walked into
            elif not stat.S_ISDIR(mode):
                raise _special(root, rel, mode)
    return out


def _check_name(root: Path, rel: str, name: str, *, what: str) -> None:
    try:
        name.encode()
    except UnicodeEncodeError:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        owner = "" if name == rel else f" of '{rel}'"
        raise SourceError(f"source directory {root}: the {what} '{shown}'{owner} is not UTF-8",
                          hint="rename it to UTF-8 (e.g. convmv -f latin1 -t utf8): "
                          "reports and ansible carry only UTF-8 names") from None


def _special(root: Path, rel: str, mode: int) -> SourceError:
    kind = ("named pipe (FIFO)" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "device file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")
    return SourceError(f"source directory {root} holds a {kind} at {rel!r}: pullboot copies "
                       "only files, directories and links",
                       hint="remove it from the source directory (or move it elsewhere)")


def _open_regular(root: Path, path: Path) -> io.BufferedReader:
    """``path`` opened for reading if it is (still) a regular file, without blocking."""
    fd = os.open(path, _OPEN_FLAGS)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _special(root, path.relative_to(root).as_posix(), mode)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _file_hash(root: Path, path: Path) -> bytes:
    with _open_regular(root, path) as fh:
        return hashlib.file_digest(fh, "sha256").digest()
