"""One pullboot run at a time per state dir: an ``flock`` on ``<state_dir>/lock``.

The kernel drops an flock when its holder dies, however it dies, so a lock
left by a killed process never blocks the next run. The holder writes its PID,
start time and command into the lock file so that a refused run can say who
holds it; that text is informative only, the flock is the lock.

The descriptor is opened close-on-exec (Python's default), so ansible-playbook
and its workers never inherit the lock and cannot keep it after pullboot died.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final

from pullboot.atomic import check_dir
from pullboot.errors import LockError, StateError

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 0.1
# A holder writes its details right after taking the lock; a reader that
# finds the file empty (or naming a dead process) retries this long.
_READ_HOLDER_SECONDS: Final = 0.3


@dataclass(frozen=True)
class Holder:
    """Who holds the lock, as written in the lock file (all fields may be unknown)."""

    pid: int | None
    started_at: str | None
    command: str | None = None

    def describe(self) -> str:
        if self.pid is None:
            return "an unknown process"
        when = f", started {self.started_at}" if self.started_at else ""
        what = f" ({self.command})" if self.command else ""
        return f"PID {self.pid}{what}{when}"


class RunLock:
    """The state dir's run lock. The constructor does no I/O; :meth:`acquire` does.

    Usable as a context manager once acquired::

        lock = RunLock(state_dir / "lock", command="run")
        lock.acquire(wait=0)        # LockError (exit 75) when held elsewhere
        with lock:
            ...
    """

    def __init__(self, path: Path, *, command: str = "run") -> None:
        self.path = path
        self.command = command
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, wait: float = 0.0, cancel: threading.Event | None = None) -> float:
        """Take the lock, waiting up to ``wait`` seconds; returns the seconds waited.

        Raises LockError naming the holder when the lock stays taken (or
        ``cancel`` is set while waiting), StateError when the lock file cannot
        be created.
        """
        fd = self._open()
        started = time.monotonic()
        deadline = started + max(wait, 0.0)
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise StateError(f"cannot lock {self.path}: {exc.strerror}") from exc
            now = time.monotonic()
            if now >= deadline or (cancel is not None and cancel.is_set()):
                holder = read_holder(self.path)
                os.close(fd)
                waited = f" after waiting {now - started:.1f}s" if wait > 0 else ""
                raise LockError(
                    f"another pullboot run holds {self.path}{waited}: {holder.describe()}",
                    hint="wait for it to finish (pullboot status --wait), or pass "
                    "--wait-lock SECONDS to queue behind it")
            if not announced:
                log.info("waiting up to %.0fs for the run lock held by %s", wait,
                         read_holder(self.path).describe())
                announced = True
            if cancel is not None:
                cancel.wait(min(POLL_SECONDS, deadline - now))
            else:
                time.sleep(min(POLL_SECONDS, deadline - now))
        self._fd = fd
        self._write_holder()
        waited_s = time.monotonic() - started
        log.debug("run lock %s taken after %.2fs", self.path, waited_s)
        return waited_s

    def release(self) -> None:
        """Empty the holder details and drop the lock; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):  # the flock goes away with the descriptor anyway
            os.ftruncate(fd, 0)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Taken before the state dir is prepared, and truncated once held: a
            # symlink planted in a dir others can write would aim that at any file.
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                check_dir(dfd, self.path.parent)
                return os.open(self.path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            finally:
                os.close(dfd)
        except StateError:
            raise
        except OSError as exc:
            raise StateError(f"cannot create the lock file {self.path}: {exc.strerror}",
                             hint="run as root, or pass --state-dir / PULLBOOT_STATE_DIR "
                             "pointing at a writable directory") from exc

    def _write_holder(self) -> None:
        assert self._fd is not None
        info = {"pid": os.getpid(), "command": self.command,
                "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        data = json.dumps(info).encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError as exc:  # the lock is held; only the courtesy text is lost
            log.debug("could not write lock holder details: %s", exc)


def read_holder(path: Path) -> Holder:
    """The holder named in the lock file; retried briefly while it is being written."""
    deadline = time.monotonic() + _READ_HOLDER_SECONDS
    holder = Holder(None, None)
    while True:
        try:
            raw = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            raw = {}
        pid = raw.get("pid") if isinstance(raw, dict) else None
        if isinstance(pid, int):
            holder = Holder(pid, str(raw.get("started_at") or "") or None,
                            str(raw.get("command") or "") or None)
            if pid_alive(pid):
                return holder
        if time.monotonic() >= deadline:
            return holder
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
