"""The run report: one frozen record per run, written as ``report.json``.

The same dict is printed by ``pullboot run --json``, shipped to S3 and read
back by ``pullboot status``; its keys are a public contract (README).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

from pullboot.errors import (
    EXIT_CANCELED,
    EXIT_OK,
    EXIT_PLAY_FAILED,
)

STATUSES: Final = ("successful", "failed", "unchanged", "error", "canceled", "timeout")
EXIT_FOR_STATUS: Final = {
    "successful": EXIT_OK, "unchanged": EXIT_OK, "failed": EXIT_PLAY_FAILED,
    "canceled": EXIT_CANCELED, "timeout": EXIT_CANCELED,
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
    status: str
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """The inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["source"] = SourceInfo(**(data.get("source") or {}))
        return cls(**values)

    def totals(self) -> dict[str, int]:
        """Stats summed over hosts."""
        out: dict[str, int] = {}
        for host_stats in self.stats.values():
            for key, count in host_stats.items():
                out[key] = out.get(key, 0) + count
        return out
