"""The data the boot steps share: request, resolution, release, report, run status.

This module sits at the bottom of the boot job's import graph (it imports
only settings, identity, roles, state and secrets types), so that the steps
(:mod:`pullboot.pipeline`, :mod:`pullboot.fetch`, :mod:`pullboot.boot`) can
pass these to each other without importing each other.

The report is one frozen record per run, written as ``report.json``; the same
dict is printed by ``pullboot run --json``, shipped to S3 and read back by
``pullboot status``: its keys are a public contract (README).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from pullboot import config
from pullboot.errors import EXIT_CANCELED, EXIT_OK, EXIT_PLAY_FAILED
from pullboot.identity import Identity
from pullboot.roles import RoleChoice
from pullboot.secrets import SecretGuard
from pullboot.state import StateDir


class RunStatus(StrEnum):
    """How a run ended. A str, so reports and JSON carry the plain word."""

    SUCCESSFUL = "successful"
    FAILED = "failed"
    UNCHANGED = "unchanged"
    ERROR = "error"
    CANCELED = "canceled"
    TIMEOUT = "timeout"

    @property
    def ok(self) -> bool:
        """True for the outcomes that mean the instance is converged."""
        return self in (RunStatus.SUCCESSFUL, RunStatus.UNCHANGED)

    @property
    def failed(self) -> bool:
        """True for the outcomes after which the next --only-if-changed must run again."""
        return not self.ok

    @classmethod
    def of_runner(cls, status: str) -> RunStatus:
        """ansible-runner's verdict; anything unexpected counts as failed."""
        try:
            found = cls(status)
        except ValueError:
            return cls.FAILED
        return found if found in _RUNNER_STATUSES else cls.FAILED


_RUNNER_STATUSES: Final = frozenset({RunStatus.SUCCESSFUL, RunStatus.FAILED,
                                     RunStatus.CANCELED, RunStatus.TIMEOUT})
EXIT_FOR_STATUS: Final[dict[RunStatus, int]] = {
    RunStatus.SUCCESSFUL: EXIT_OK, RunStatus.UNCHANGED: EXIT_OK,
    RunStatus.FAILED: EXIT_PLAY_FAILED, RunStatus.CANCELED: EXIT_CANCELED,
    RunStatus.TIMEOUT: EXIT_CANCELED,
}


@dataclass(frozen=True)
class SourceInfo:
    """Where the playbooks came from; ``stale`` when the last good release ran instead."""

    url: str | None = None
    kind: str | None = None
    ref: str | None = None
    revision: str | None = None
    release: str | None = None
    stale: bool = False
    stale_reason: str | None = None


@dataclass(frozen=True)
class Report:
    """Everything an operator needs to know about one run."""

    run_id: str
    status: RunStatus
    exit_code: int
    started_at: str
    finished_at: str
    duration_s: float
    instance: dict[str, Any]
    roles: list[dict[str, str]]
    source: SourceInfo
    playbooks: list[str]
    stats: dict[str, dict[str, int]]
    failures: list[dict[str, Any]]
    events_file: str | None
    event_count: int = 0
    vars: dict[str, str] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Boot integration: readiness signals sent, results shipping, names of the
    # secrets given to the play (never values), seconds of splay before the fetch.
    signals: list[dict[str, Any]] = field(default_factory=list)
    shipped: dict[str, Any] | None = None
    secrets: list[str] = field(default_factory=list)
    splay_s: float = 0.0
    pullboot_version: str = ""
    sequence: int = 0
    # Every setting that is not at its default, with its value and origin:
    # what this run used, from the one resolver (the same as `pullboot plan`).
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """The inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["source"] = SourceInfo(**(data.get("source") or {}))
        values["status"] = RunStatus(values.get("status", RunStatus.ERROR))
        return cls(**values)

    def totals(self) -> dict[str, int]:
        """Stats summed over hosts."""
        out: dict[str, int] = {}
        for host_stats in self.stats.values():
            for key, count in host_stats.items():
                out[key] = out.get(key, 0) + count
        return out


@dataclass(frozen=True)
class Request:
    """What the CLI asks for. ``cli`` holds dotted setting keys from flags."""

    cli: Mapping[str, Any] = field(default_factory=dict)
    config_path: Path = config.DEFAULT_CONFIG
    config_required: bool = False
    environ: Mapping[str, str] | None = None
    on_event: Callable[[Mapping[str, Any]], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # Called with each phase name (resolve, fetch, run, report) as the run
    # proceeds; boot integration writes the live status file from it.
    on_phase: Callable[[str, str], None] | None = None
    # Called as soon as identity and settings are known, before roles are
    # validated: readiness signals must be able to say ABANDON even when no
    # valid role is found.
    on_identity: Callable[[config.Settings, Identity], None] | None = None
    # Called once identity and roles are known, before anything is fetched
    # (splay, secrets).
    before_fetch: Callable[[Resolution], None] | None = None
    # Called with every run's report before it is written and before success is
    # recorded: the one place after the play that may change the outcome
    # (readiness signals, signals.strict). Returns the final report.
    finalize: Callable[[Report], Report] | None = None
    # The run's secrets (boot integration fills it in before_fetch): values to
    # redact from events and artifacts, and ansible's env (references only).
    secrets: SecretGuard = field(default_factory=SecretGuard)
    # What the CLI could not honour (``pullboot pull``'s ansible-pull options): the
    # report's ``warnings`` start with these.
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolution:
    """Who we are and what to run, each value with its origin."""

    settings: config.Settings
    identity: Identity
    roles: tuple[RoleChoice, ...]
    state: StateDir


@dataclass(frozen=True)
class Release:
    """A tree ready to run and what it is."""

    tree: Path
    info: SourceInfo
    # For the report: what the fetch noticed (a tree with submodules not checked out, a
    # release modified on the host and rebuilt).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunResult:
    """The report of a run and where it was written (None: it could not be)."""

    report: Report
    report_path: Path | None
