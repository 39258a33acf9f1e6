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
# ansible's own error text kept from ``verbose`` events (the rest is in events.jsonl).
MAX_ERROR_TEXT: Final = 4096
# ansible-core >= 2.19 starts an error with "[ERROR]: ", older releases with "ERROR! ".
ERROR_START_RE: Final = re.compile(r"^(?:\[ERROR\]: ?|ERROR! ?)")
# Where ansible says the error is: "Origin: FILE[:LINE[:COL]]" (>= 2.19), or
# "The error appears to be in 'FILE': line N, column M" (older releases).
ORIGIN_RE: Final = re.compile(r"^Origin: (?P<file>.+?)(?::(?P<line>\d+)(?::(?P<col>\d+))?)?$")
OLD_ORIGIN_RE: Final = re.compile(
    r"The error appears to be in '(?P<file>[^']+)': line (?P<line>\d+), column (?P<col>\d+)")
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


# A secret's line shorter than this is not redacted on its own (a PEM key's
# "-----END" or a blank line would mask half the output and protect nothing).
MIN_LINE: Final = 8
# A secret cut short (by a display width, ansible's or our own truncation)
# leaves a prefix at the end of a string; prefixes this long are redacted.
MIN_PREFIX: Final = 6
# What may follow a cut-off prefix: end of text, a closing quote, a line end,
# an escaped line end, or a truncation mark.
_CUT_END: Final = re.compile(r"""\Z|["'\r\n]|\\[rnu"\\]|\.\.\.|\u2026""")


def encodings(value: str) -> set[str]:
    """Every form ``value`` takes in ansible's output and pullboot's files.

    Raw; with the pty's CRLF line ends; JSON-escaped (as ansible-runner and
    events.jsonl write it, ASCII-only or not) once and twice (an event's
    ``stdout`` holds ansible's JSON display, escaped again in the event line);
    Python repr (``\\n``, ``\\\\``, ``\\'``); the shell-quoted form of a command line;
    and the same for each line of a multi-line value (YAML and
    line-by-line displays split it).
    """
    import shlex

    parts = {value}
    lines = [line.rstrip("\r") for line in value.split("\n")]
    if len(lines) > 1:
        parts.update(line for line in lines if len(line.strip()) >= MIN_LINE)
    base = {form for part in parts for form in (part, part.replace("\n", "\r\n"))}
    once = {*base, *(shlex.quote(b) for b in base)}
    for b in base:
        once.update((json.dumps(b)[1:-1], json.dumps(b, ensure_ascii=False)[1:-1],
                     repr(b)[1:-1]))
    twice = set(once)
    for form in once:
        twice.update((json.dumps(form)[1:-1], json.dumps(form, ensure_ascii=False)[1:-1]))
    return {form for form in twice if len(form) >= 4}


class Redactor:
    """Replaces known secret values, in every encoding, in text. Empty until secrets are added."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: list[str] = []
        for value in secrets:
            self.add(value)

    def add(self, value: str) -> None:
        # Very short values would redact half the output and protect nothing.
        if len(value) < 4:
            return
        known = set(self._values)
        self._values.extend(form for form in encodings(value) if form not in known)
        # Longest first, so a secret containing another is replaced whole.
        self._values.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return self._cut_prefixes(text)

    def _cut_prefixes(self, text: str) -> str:
        """Redact a secret's prefix cut off at the end of a string (truncated output)."""
        for value in self._values:
            if len(value) <= MIN_PREFIX:
                continue
            head = value[:MIN_PREFIX]
            start = text.find(head)
            while start != -1:
                size = _shared_prefix(text[start:start + len(value)], value)
                if _CUT_END.match(text, start + size):
                    text = text[:start] + REDACTED + text[start + size:]
                    start += len(REDACTED)
                else:
                    start += 1
                start = text.find(head, start)
        return text

    def __bool__(self) -> bool:
        return bool(self._values)


def _shared_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


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
        # ansible's last error block (see _keep_error_text), redacted and bounded.
        self.error_text = ""

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
        # Summaries and the live view see only what the file keeps: redacted
        # before any truncation, so no cut-off prefix of a secret survives.
        clean = json.loads(line) if self._redact else event
        self._summarise(clean)
        if self._on_event is not None:
            try:
                self._on_event(clean)
            except Exception:  # a display problem must never break the run
                log.debug("event display failed", exc_info=True)
        return False

    def _summarise(self, event: Mapping[str, Any]) -> None:
        name = event.get("event")
        data = event.get("event_data") or {}
        if name in ("verbose", "error"):
            self._keep_error_text(event.get("stdout"))
        elif name == "playbook_on_stats":
            self._add_stats(data)
        elif name == "playbook_on_no_hosts_matched":
            self._no_hosts(data)
        elif name in ("runner_on_failed", "runner_on_unreachable") and not data.get(
                "ignore_errors"):
            self.failures.append(Failure(
                play=data.get("play"), task=data.get("task"), host=data.get("host"),
                message=failure_message(data.get("res") or {}),
            ))

    def _keep_error_text(self, stdout: Any) -> None:
        """Keep ansible's last error block: a play that stops before any task says why only here.

        The last one, because the error that stopped ansible is the last it printed
        (an earlier one may have been survived). Bounded to MAX_ERROR_TEXT.
        """
        if not isinstance(stdout, str):
            return
        line = self._redact(strip_ansi(stdout))
        if ERROR_START_RE.match(line):
            self.error_text = ""
        elif not self.error_text or len(self.error_text) >= MAX_ERROR_TEXT:
            return
        self.error_text = (self.error_text + line + "\n")[:MAX_ERROR_TEXT]

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


@dataclass(frozen=True)
class AnsibleError:
    """ansible's own account of why it stopped: its message and where (``file:line:col``)."""

    message: str
    origin: str | None


def ansible_error(text: str, *, tree: Path | None = None) -> AnsibleError | None:
    """The first error in ansible's output ``text``, its origin relative to ``tree``; else None.

    The message is ansible's first paragraph (continuation lines joined), without
    the quoted source snippet that follows, and at most MAX_MESSAGE characters.
    """
    lines = strip_ansi(text).splitlines()
    start = next((i for i, line in enumerate(lines) if ERROR_START_RE.match(line)), None)
    if start is None:
        return None
    parts = [ERROR_START_RE.sub("", lines[start]).strip()]
    origin, in_message = None, True
    for line in lines[start + 1:]:
        if ERROR_START_RE.match(line):
            break  # the next error: this one named no origin
        # The origin follows the message, or a "caused by" chain (old releases: a paragraph).
        found = ORIGIN_RE.match(line.strip()) or OLD_ORIGIN_RE.search(line)
        if found:
            origin = _origin(found, tree)
            break
        if not line.strip():
            in_message = False
        elif in_message:
            parts.append(line.strip())
    message = " ".join(p for p in parts if p)
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return AnsibleError(message=message or "ansible reported an error (no message)",
                        origin=origin)


def _origin(found: re.Match[str], tree: Path | None) -> str:
    path = found["file"]
    for base in (tree, tree.resolve()) if tree is not None else ():
        with contextlib.suppress(ValueError):
            path = str(Path(path).relative_to(base))
            break
    return ":".join(x for x in (path, found["line"], found["col"]) if x)


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
