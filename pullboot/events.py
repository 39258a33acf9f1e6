"""Event stream: every ansible-runner event to ``events.jsonl``, plus a running summary.

Events are written as they arrive and not kept in memory (a 2,000-task play
must not grow pullboot's RSS); only per-host stats and failures are kept.
Redaction of known secret values happens on the serialised line, so it also
covers values nested anywhere inside ``event_data``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

log = logging.getLogger(__name__)

ANSI_RE: Final = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
MAX_MESSAGE: Final = 2000
REDACTED: Final = "********"
STAT_KEYS: Final = {"ok": "ok", "changed": "changed", "failures": "failed",
                    "dark": "unreachable", "skipped": "skipped", "rescued": "rescued",
                    "ignored": "ignored"}


@dataclass(frozen=True)
class Failure:
    """A failed or unreachable task, as shown in the report."""

    play: str | None
    task: str | None
    host: str | None
    message: str


def strip_ansi(text: str) -> str:
    return ANSI_RE.sub("", text)


class Redactor:
    """Replaces known secret values in text. Empty until secrets are registered."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: list[str] = []
        for value in secrets:
            self.add(value)

    def add(self, value: str) -> None:
        # Very short values would redact half the output and protect nothing.
        if len(value) >= 4 and value not in self._values:
            self._values.append(value)
            # JSON-escaped form too, for values with quotes or backslashes.
            escaped = json.dumps(value)[1:-1]
            if escaped != value:
                self._values.append(escaped)
            # Longest first, so a secret containing another is replaced whole.
            self._values.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, REDACTED)
        return text

    def __bool__(self) -> bool:
        return bool(self._values)


class EventRecorder:
    """An ansible-runner ``event_handler`` that streams events to a JSONL file.

    Returns False to ansible-runner so that it does not also keep one file
    per event under its artifacts (they grow without bound).
    """

    def __init__(self, path: Path, *, redact: Redactor | None = None,
                 on_event: Callable[[Mapping[str, Any]], None] | None = None) -> None:
        self.path = path
        self.count = 0
        self.stats: dict[str, dict[str, int]] = {}
        self.failures: list[Failure] = []
        self._redact = redact or Redactor()
        self._on_event = on_event
        self._fh: IO[str] | None = None
        self.warnings: list[str] = []

    def __enter__(self) -> EventRecorder:
        self._fh = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            # A failed close was already reported by __call__, or had nothing left.
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def __call__(self, event: dict[str, Any]) -> bool:
        """Record one event (the ansible-runner event_handler contract)."""
        if "stdout" in event and isinstance(event["stdout"], str):
            event["stdout"] = strip_ansi(event["stdout"])
        line = json.dumps(event, default=str, ensure_ascii=False)
        if self._redact:
            line = self._redact(line)
        if self._fh is not None:
            try:
                self._fh.write(line + "\n")
                self._fh.flush()
            except OSError as exc:
                # A full disk must not cost the play its outcome: keep
                # summarising, and say in the report that the file is short.
                self.warnings.append(f"events file {self.path} is incomplete from event "
                                     f"{self.count + 1}: {exc.strerror}")
                log.warning("%s", self.warnings[-1])
                self._fh = None
        self.count += 1
        self._summarise(event)
        if self._on_event is not None:
            try:
                # The live view must not show what the file does not keep.
                self._on_event(json.loads(line) if self._redact else event)
            except Exception:  # a display problem must never break the run
                log.debug("event display failed", exc_info=True)
        return False

    def _summarise(self, event: Mapping[str, Any]) -> None:
        name = event.get("event")
        data = event.get("event_data") or {}
        if name == "playbook_on_stats":
            self._add_stats(data)
        elif name == "playbook_on_no_hosts_matched":
            self._no_hosts(data)
        elif name in ("runner_on_failed", "runner_on_unreachable") and not data.get(
                "ignore_errors"):
            self.failures.append(Failure(
                play=data.get("play"), task=data.get("task"), host=data.get("host"),
                message=self._redact(failure_message(data.get("res") or {})),
            ))

    def _no_hosts(self, data: Mapping[str, Any]) -> None:
        # ansible skips such a play and still exits 0: say so, or a group play
        # whose inventory was not found "succeeds" having done nothing.
        message = self._redact(
            f"play {data.get('play') or '(unnamed)'!r} matched no hosts (hosts: "
            f"{data.get('play_pattern')}) and was skipped: check the inventory "
            "(-i / run.inventory) and the limit (run.limit; default: this host)")
        self.warnings.append(message)
        log.warning("%s", message)

    def _add_stats(self, data: Mapping[str, Any]) -> None:
        for src, dst in STAT_KEYS.items():
            for host, count in (data.get(src) or {}).items():
                self.stats.setdefault(host, dict.fromkeys(STAT_KEYS.values(), 0))[dst] += count


def failure_message(res: Mapping[str, Any]) -> str:
    """The most useful one-line-ish message from a task result."""
    parts = []
    for key in ("msg", "stderr", "reason", "module_stderr", "stdout"):
        value = res.get(key)
        if isinstance(value, str) and value.strip():
            parts.append(value.strip())
            break
    if not parts and res.get("censored"):
        parts.append(str(res["censored"]))
    message = strip_ansi(" ".join(parts))
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    if res.get("rc") not in (None, 0):
        message = f"{message} (rc={res['rc']})".lstrip()
    return message or "task failed (no message)"


def describe(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """A short (status, text) line for an event worth showing live, else None."""
    name = str(event.get("event", ""))
    data = event.get("event_data") or {}
    task = data.get("task") or ""
    host = data.get("host") or ""
    if name == "playbook_on_play_start":
        return "play", str(data.get("play") or data.get("name") or "")
    if name == "runner_on_ok":
        return ("changed" if (data.get("res") or {}).get("changed") else "ok"), f"{task} [{host}]"
    if name == "runner_on_failed":
        status = "ignored" if data.get("ignore_errors") else "failed"
        return status, f"{task} [{host}]: {failure_message(data.get('res') or {})}"
    if name == "runner_on_unreachable":
        return "unreachable", f"{task} [{host}]: {failure_message(data.get('res') or {})}"
    if name == "runner_on_skipped":
        return "skipped", f"{task} [{host}]"
    return None
