"""The one atomic file writer and the one tolerant JSON reader for pullboot's own files.

:func:`write_atomic` publishes a file so that a reader (or a crash, or a power
cut) sees the old content or the new one, never half, and so that nobody who
can write the directory can redirect the write:

* the temp file is created in the target's directory with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` (never an existing file, never through a
  symlink), relative to a descriptor of that directory (a directory renamed
  or swapped meanwhile is not written into);
* it is fsynced, renamed over the target (a symlink planted at the target
  is replaced, not followed), and the directory is fsynced;
* a directory that others may write (group/world-writable without the
  sticky bit) or that is owned by someone else than root or us is refused
  with :class:`UnsafeDirError`.

:func:`read_json` reads only regular files owned by root or us, never
through a symlink.

It reads back a file pullboot wrote earlier and never raises:
a missing file gives None quietly; a malformed one (truncated, binary, the
wrong JSON type, a directory, a FIFO, a symlink, too big) gives None and a
warning naming the file, so a damaged state dir never wedges later runs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Final, TypeVar

from pullboot.errors import UnsafeDirError

log = logging.getLogger(__name__)

# Reports hold every task result; anything bigger than this is not ours.
MAX_READ_BYTES: Final = 64 << 20
_T = TypeVar("_T")


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions ``mode``.

    Raises UnsafeDirError for a directory others could use to redirect the
    write, OSError for I/O trouble (the old file is then left untouched).
    """
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        check_dir(dfd, path.parent)
        tmp = f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=dfd)
        try:
            try:
                os.fchmod(fd, mode)  # the umask must not decide who may read it
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            _replace(tmp, path, dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o600) -> None:
    """:func:`write_atomic` of ``data`` as indented JSON (non-JSON values via ``str``)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    write_atomic(path, text.encode("utf-8"), mode=mode)


def check_dir(dfd: int, where: Path) -> None:
    """Raise UnsafeDirError unless only root or we can add or replace entries of ``dfd``."""
    st = os.fstat(dfd)
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafeDirError(f"{where} is owned by uid {st.st_uid}, not by root or by us: "
                             "refusing to write into it",
                             hint=f"chown root {where} (or use another directory)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafeDirError(f"{where} is writable by others (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}): refusing to write into it",
                             hint=f"chmod go-w {where} (or use another directory)")


def remove(path: Path) -> None:
    """Remove ``path`` whatever it is (file, symlink, or a directory where a file belongs)."""
    try:
        path.unlink(missing_ok=True)
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)
    except PermissionError:  # Linux says EISDIR, others EPERM, for unlink of a directory
        if not path.is_dir() or path.is_symlink():
            raise
        shutil.rmtree(path, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that renames into it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path, expect: type[_T], *, what: str = "file",
              warn: bool = True) -> _T | None:
    """The JSON value in ``path`` if it is a readable ``expect``; otherwise None.

    Never raises. Missing: None quietly. Anything else unusable (a directory,
    a symlink, a FIFO, over :data:`MAX_READ_BYTES`, not UTF-8, not JSON, too
    deep, the wrong type) logs one warning naming the file (unless ``warn`` is
    false) and gives None, so callers carry on as if the file were absent.
    """
    try:
        raw = read_bytes(path)
        if raw is None:
            return None
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, expect):
            raise ValueError(f"holds a JSON {type(data).__name__}, not a "
                             f"{'object' if expect is dict else expect.__name__}")
        return data
    except (OSError, ValueError, RecursionError) as exc:
        if warn:
            log.warning("ignoring the unreadable %s %s: %s", what, path,
                        getattr(exc, "strerror", None) or exc)
        return None


def read_bytes(path: Path, *, limit: int = MAX_READ_BYTES) -> bytes | None:
    """A regular file's bytes (None when missing), never through a symlink or from a FIFO.

    Only files owned by root or by us are read: pullboot wrote them, nobody else.
    Raises OSError (or ValueError when over ``limit``) for anything else.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, "is a symlink (not followed)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise OSError(errno.EINVAL, kind)
        if st.st_uid not in (0, os.geteuid()):
            raise OSError(errno.EPERM, f"owned by uid {st.st_uid}, not by root or us")
        if st.st_size > limit:
            raise ValueError(f"is {st.st_size} bytes, more than {limit}")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > limit:
                raise ValueError(f"is more than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _replace(tmp: str, path: Path, dfd: int) -> None:
    """Rename ``tmp`` over ``path``; a directory squatting on the name is removed first."""
    try:
        os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        return
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
    log.warning("%s is a directory where a file belongs: removing it", path)
    remove(path)
    os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
