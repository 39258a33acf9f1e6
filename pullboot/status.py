"""The live status file (default ``/run/pullboot/status.json``) and waiting on it.

A run that holds the lock rewrites the file atomically at every phase::

    {"status": "running", "phase": "fetch", "run_id": "...", "pid": 1234,
     "boot_id": "...", "started_at": "...", "updated_at": "...",
     "exit_code": null, "report": null}

and once more when it ends (``status`` is then the report's status and
``exit_code`` its exit code). ``/run`` is emptied at every boot, and
``boot_id`` ties the file to one boot anyway, so :func:`wait` can tell "the
boot run has not started yet" from "it has finished" even on a persistent path
(the same idea as ``cloud-init status --wait``).

Writing the file must never break a run: a failure is logged once and ignored.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pullboot.atomic import check_dir, read_json, write_json_atomic
from pullboot.errors import PullbootError, UnsafeDirError
from pullboot.lock import pid_alive

log = logging.getLogger(__name__)

BOOT_ID_PATH: Final = Path("/proc/sys/kernel/random/boot_id")
POLL_SECONDS: Final = 0.2
RUNNING: Final = "running"


def current_boot_id() -> str | None:
    """The kernel's id of this boot, or None where /proc does not have it."""
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


class StatusFile:
    """Writer of the live status file. The constructor does no I/O."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, Any] = {
            "status": RUNNING, "phase": "starting", "run_id": None, "pid": os.getpid(),
            "boot_id": current_boot_id(), "started_at": _now(), "updated_at": None,
            "exit_code": None, "report": None,
        }
        self._broken = False

    def update(self, **changes: Any) -> None:
        """Merge ``changes`` and rewrite the file (atomically)."""
        self._data.update(changes)
        self._data["updated_at"] = _now()
        if self._broken:
            return
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            # 0644: status only, no secrets, readable by monitoring. The writer
            # follows no symlink and refuses a directory others can write.
            write_json_atomic(self.path, self._data, mode=0o644)
        except OSError as exc:
            self._broken = True
            why = (f"{exc.message}; fix: {exc.hint}" if isinstance(exc, PullbootError)
                   else exc.strerror or str(exc))
            log.warning("cannot write the status file %s (%s); `pullboot status --wait` "
                        "will not see this run (set status_file / PULLBOOT_STATUS_FILE)",
                        self.path, why)

    def phase(self, phase: str, run_id: str | None = None) -> None:
        self.update(phase=phase, **({"run_id": run_id} if run_id else {}))

    def finish(self, *, status: str, exit_code: int, report: str | None) -> None:
        self.update(phase="done", status=status, exit_code=exit_code, report=report)


def read(path: Path, *, warn: bool = True) -> dict[str, Any] | None:
    """The status file's content, or None when absent or unreadable (warned, see read_json).

    A file in a directory others can write is ignored too: :class:`StatusFile`
    never writes there, so whatever is there was not written by pullboot.
    """
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return read_json(path, dict, what="status file", warn=warn)  # it says why
    try:
        check_dir(dfd, path.parent)
    except UnsafeDirError as exc:
        if warn:
            log.warning("ignoring the status file %s: %s", path, exc.message)
        return None
    finally:
        os.close(dfd)
    return read_json(path, dict, what="status file", warn=warn)


@dataclass(frozen=True)
class WaitOutcome:
    """How waiting ended: ``finished`` (see ``status``), ``died`` or ``timeout``."""

    outcome: str
    status: dict[str, Any] | None
    waited_s: float


def wait(path: Path, *, timeout: float = 0.0, poll: float = POLL_SECONDS,
         on_waiting: Callable[[str], None] | None = None) -> WaitOutcome:
    """Block until this boot's run has finished (``timeout`` 0: no limit).

    Waits while the file is missing, belongs to an earlier boot, or says
    ``running`` with a live PID. A ``running`` file whose PID is gone means the
    run was killed: ``died``. ``on_waiting`` is called once with the reason.
    """
    started = time.monotonic()
    boot_id = current_boot_id()
    told = False
    first = True
    while True:
        data = read(path, warn=first)  # a damaged file is named once, not at every poll
        first = False
        reason = _waiting_reason(data, boot_id)
        if reason is None:
            assert data is not None
            return WaitOutcome("finished", data, time.monotonic() - started)
        if reason == "died":
            return WaitOutcome("died", data, time.monotonic() - started)
        if not told and on_waiting is not None:
            on_waiting(reason)
            told = True
        if timeout and time.monotonic() - started >= timeout:
            return WaitOutcome("timeout", data, time.monotonic() - started)
        time.sleep(poll)


def _waiting_reason(data: dict[str, Any] | None, boot_id: str | None) -> str | None:
    if data is None:
        return "no run has started yet"
    if boot_id and data.get("boot_id") and data.get("boot_id") != boot_id:
        return "no run has started since this boot"
    if data.get("status") == RUNNING:
        pid = data.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            return "died"
        return f"run {data.get('run_id') or '(starting)'} is in phase {data.get('phase')}"
    return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
