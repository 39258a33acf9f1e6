"""The state dir: runs, releases, caches, and the ``current`` release pointer.

Layout under ``state_dir``::

    runs/<run-id>/{report.json,events.jsonl}   one dir per run, newest kept
    releases/<release-id>/                      fetched trees, fully written
    releases/<release-id>/.pullboot/manifest.json   what was fetched (checked before reuse)
    releases/.staging-*                         trees being written (never run)
    current -> releases/<release-id>            switched atomically (symlink rename)
    cache/<kind>/...                            git clones, downloaded bundles
    runner/                                     ansible-runner's private data dir

A release dir appears only by ``rename`` of a complete staging dir and
``current`` moves only by renaming a new symlink over it, so a crash at any
moment leaves either the old or the new release, never half of one.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pullboot import manifest
from pullboot.atomic import (
    fsync_dir,
    read_bytes,
    read_json,
    remove,
    write_atomic,
    write_json_atomic,
)
from pullboot.errors import StateError

log = logging.getLogger(__name__)

_RELEASE_RE = re.compile(r"[^A-Za-z0-9._+-]")


def new_run_id(now: datetime | None = None) -> str:
    """Sortable, unique: ``20261128T042500Z-1a2b3c``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def release_id(kind: str, revision: str) -> str:
    """A dir name for a revision: safe characters only, bounded length."""
    clean = _RELEASE_RE.sub("_", revision)
    if len(clean) > 64:
        import hashlib

        clean = clean[:40] + "-" + hashlib.sha256(revision.encode()).hexdigest()[:16]
    return f"{kind}-{clean}"


@dataclass(frozen=True)
class StateDir:
    """Paths under one state dir. Construction does no I/O; :meth:`prepare` does."""

    root: Path

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def runner(self) -> Path:
        return self.root / "runner"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def last_good(self) -> Path:
        return self.root / "last-good"

    @property
    def last_success_file(self) -> Path:
        return self.root / "last-success.json"

    def prepare(self) -> None:
        """Create the layout (mode 0700: reports and caches may be sensitive)."""
        try:
            for path in (self.root, self.runs, self.releases, self.cache, self.runner):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Through the one writer: it also refuses a dir others could write.
            probe = self.root / f".write-test-{os.getpid()}"
            write_atomic(probe, b"")
            probe.unlink()
        except StateError:
            raise
        except OSError as exc:
            raise StateError(f"state dir {self.root} is not writable: {exc.strerror}",
                             hint="run as root, or pass --state-dir / PULLBOOT_STATE_DIR "
                             "pointing at a writable directory") from exc

    def run_dir(self, run_id: str) -> Path:
        """Create the run's dir and give it the next sequence number.

        Runs are ordered by that number, not by time: a clock that jumps
        backwards between runs must not make pruning delete the newest run.
        """
        path = self.runs / run_id
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _read_int(path / "seq", warn=False):
            write_atomic(path / "seq", f"{self._next_sequence()}\n".encode())
        return path

    def sequence_of(self, run_dir: Path) -> int:
        return _read_int(run_dir / "seq", warn=False) or 0

    def _next_sequence(self) -> int:
        counter = self.root / "sequence"
        last = _read_int(counter)
        if last is None:
            # Missing or damaged: rebuilt from the runs, so order is never lost.
            last = max((self.sequence_of(p) for p in self.runs.iterdir() if p.is_dir()),
                       default=0)
        write_atomic(counter, f"{last + 1}\n".encode())
        return last + 1

    def _runs_newest_first(self) -> list[Path]:
        dirs = [p for p in self.runs.iterdir() if p.is_dir()] if self.runs.is_dir() else []
        return sorted(dirs, key=lambda p: (self.sequence_of(p), p.name), reverse=True)

    # -- releases -------------------------------------------------------------

    def staging(self) -> Path:
        """A fresh, empty staging dir inside releases/ (same filesystem: rename is atomic)."""
        path = self.releases / f".staging-{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir(mode=0o700)
        return path

    def release(self, rid: str) -> Path:
        return self.releases / rid

    def commit_release(self, staging: Path, rid: str, *, replace: bool = False) -> Path:
        """Move a complete staging dir into place as release ``rid``, with its manifest.

        Idempotent: an existing release ``rid`` is kept, unless ``replace`` (it was
        modified on the host): it is then moved aside, the new one renamed in,
        and the old one removed (a crash in between leaves a ``.staging-*`` dir
        that the next run removes, and no release ``rid``, so it is fetched again).
        """
        target = self.release(rid)
        manifest.record(staging)
        _fsync_tree(staging)
        if replace and target.is_dir():
            aside = self.releases / f".staging-{os.getpid()}-{secrets.token_hex(4)}-modified"
            target.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # Same revision committed before: keep the existing one.
            shutil.rmtree(staging, ignore_errors=True)
        fsync_dir(self.releases)
        return target

    def release_problem(self, rid: str) -> str | None:
        """None when release ``rid`` is what was committed, else what changed on the host."""
        return manifest.verify(self.release(rid))

    def switch_current(self, rid: str) -> None:
        """Point ``current`` at release ``rid`` with one atomic rename."""
        self._point(self.current, rid)

    def current_release(self) -> str | None:
        """The release id ``current`` points at, if it points at a complete release."""
        return self._pointed(self.current)

    def last_good_release(self) -> str | None:
        """The release the last successful run used, if it is still on disk."""
        return self._pointed(self.last_good)

    def record_success(self, rid: str, record: dict[str, Any]) -> None:
        """After a successful run: ``last-good`` -> ``rid``, and the change-detection record."""
        self._point(self.last_good, rid)
        write_json_atomic(self.last_success_file, record)

    def clear_success(self) -> None:
        """Forget the change-detection record (after a failed run: retry next time)."""
        remove(self.last_success_file)

    def last_success(self) -> dict[str, Any] | None:
        """What :meth:`record_success` stored last, or None (missing or damaged: warned)."""
        record = read_json(self.last_success_file, dict, what="last-success record")
        bad = [k for k in ("digest", "revision", "run_id")
               if record is not None and not isinstance(record.get(k), str | None)]
        if bad:
            log.warning("ignoring the malformed last-success record %s: %s is not a string",
                        self.last_success_file, bad[0])
            return None
        return record

    def _point(self, link: Path, rid: str) -> None:
        tmp = self.root / f".{link.name}-{os.getpid()}"
        remove(tmp)
        tmp.symlink_to(Path("releases") / rid)
        try:
            tmp.replace(link)
        except OSError:
            if not link.is_dir() or link.is_symlink():
                raise
            # A directory where the pointer belongs (damage, or a hand-made copy).
            log.warning("%s is a directory, not a release pointer: removing it", link)
            remove(link)
            tmp.replace(link)
        fsync_dir(self.root)
        log.debug("%s -> releases/%s", link.name, rid)

    def _pointed(self, link: Path) -> str | None:
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("ignoring the release pointer %s: not a symlink (%s)", link,
                        exc.strerror)
            return None
        rid = Path(target).name
        if rid in ("", ".", "..") or not self.release(rid).is_dir():
            log.warning("ignoring the release pointer %s: it names no complete release (%s)",
                        link, target)
            return None
        return rid

    def clean_leftovers(self) -> None:
        """Remove staging dirs and temp links left by killed runs."""
        for path in self.releases.glob(".staging-*"):
            shutil.rmtree(path, ignore_errors=True)
        for pattern in (".current-*", ".last-good-*", ".*.tmp", "runs/*/.*.tmp"):
            for path in self.root.glob(pattern):
                remove(path)
        # Spool entries being written or deleted when a run was killed.
        for pattern in ("spool/.tmp-*", "spool/.del-*"):
            for path in self.root.glob(pattern):
                remove(path)
        # Partial downloads of killed runs (the run lock makes them all stale).
        for path in self.cache.glob("*/*.part-*"):
            path.unlink(missing_ok=True)

    def prune_releases(self, keep: int, protect: set[str]) -> None:
        """Keep the ``keep`` newest releases plus those in ``protect``."""
        rels = sorted((p for p in self.releases.iterdir()
                       if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        for path in rels[max(keep, 1):]:
            if path.name not in protect:
                shutil.rmtree(path, ignore_errors=True)

    # -- runs -----------------------------------------------------------------

    def prune_runs(self, keep: int) -> None:
        """Keep the ``keep`` newest run dirs (by sequence number)."""
        for path in self._runs_newest_first()[max(keep, 1):]:
            shutil.rmtree(path, ignore_errors=True)

    def reports(self) -> Iterator[dict[str, Any]]:
        """Reports of past runs, newest first; damaged ones are skipped with a warning."""
        for path in self._runs_newest_first():
            report = read_json(path / "report.json", dict, what="run report")
            problem = None if report is None else _report_problem(report)
            if problem:
                log.warning("ignoring the malformed run report %s: %s", path / "report.json",
                            problem)
            elif report is not None:
                yield report


# The fields that readers of old reports (status, first-run and clock checks)
# use, with the JSON types they need; anything else in a report is not read back.
_REPORT_FIELDS: Final = {"run_id": str, "status": str, "started_at": str, "instance": dict,
                         "source": dict, "stats": dict, "roles": list,
                         "duration_s": int | float}


def _report_problem(report: dict[str, Any]) -> str | None:
    """Why a run report cannot be read back, or None when its read-back fields are sound."""
    for key, kind in _REPORT_FIELDS.items():
        value = report.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"field {key!r} is a JSON {type(value).__name__}"
    if not all(isinstance(h, dict) and all(isinstance(n, int) for n in h.values())
               for h in (report.get("stats") or {}).values()):
        return "field 'stats' holds something else than per-host counts"
    if not all(isinstance(r, dict) and isinstance(r.get("name"), str)
               for r in report.get("roles") or []):
        return "field 'roles' holds an entry without a name"
    return None


def _read_int(path: Path, *, warn: bool = True) -> int | None:
    """A counter file's number, or None when missing or damaged (warned unless ``warn`` is off)."""
    try:
        raw = read_bytes(path, limit=64)
        return None if raw is None else int(raw.decode("ascii"))
    except (OSError, ValueError) as exc:
        if warn:
            log.warning("ignoring the unreadable counter %s: %s", path,
                        getattr(exc, "strerror", None) or exc)
        return None


def _fsync_tree(root: Path) -> None:
    # Data must be on disk before the rename that publishes it; otherwise a
    # power cut can leave a "complete" release with empty files.
    started = time.monotonic()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))
    log.debug("fsync of %s took %.3fs", root, time.monotonic() - started)
