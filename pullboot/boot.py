"""The outer boot job: lock, live status, the pipeline, readiness signals, results shipping.

:func:`run` is what ``pullboot run`` calls::

    lock (exit 75, or --wait-lock) -> status file -> pipeline.run(req + hooks)
        before_fetch: plan signals + start heartbeats -> splay -> fetch secrets
    -> signals (tags, cloudformation, lifecycle) -> report.json -> ship -> status done

Like :func:`pipeline.run` it returns a report for every outcome and raises
only LockError (another run holds the lock) or StateError (no lock file can
be made). Nothing after the play may turn a successful run into a failed
one, except a failed signal with ``signals.strict``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from pullboot import config, pipeline, secrets, ship, signals, splay
from pullboot.atomic import read_json, write_json_atomic
from pullboot.errors import EXIT_PLAY_FAILED, PullbootError
from pullboot.identity import Identity
from pullboot.lock import RunLock
from pullboot.model import Report, Request, Resolution, RunResult, RunStatus
from pullboot.state import StateDir
from pullboot.status import StatusFile, current_boot_id

log = logging.getLogger(__name__)

BOOT_MARKER: Final = "boot-signals.json"
SIGNAL_SWITCHES: Final = ("signals.lifecycle_hook", "signals.cloudformation", "signals.tags")


@contextmanager
def locked(req: Request, *, command: str) -> Iterator[config.Settings]:
    """Hold the state dir's run lock (``lock.wait`` seconds of patience) for a block."""
    base = pipeline.lenient_base_settings(req)
    lock = RunLock(Path(base.get("state_dir")) / "lock", command=command)
    waited = lock.acquire(wait=base.get("lock.wait"), cancel=req.cancel)
    if waited >= 0.5:
        log.info("run lock taken after waiting %.1fs", waited)
    with lock:
        yield base


def run(req: Request) -> RunResult:
    """The boot job under the run lock; see the module docstring."""
    with locked(req, command="run") as base:
        return _Job(req, base).run()


def plan(req: Request) -> pipeline.Plan:
    """``pipeline.plan`` under the run lock (it fetches into the shared cache)."""
    with locked(req, command="plan"):
        return pipeline.plan(req)


class _Job:
    """One boot run. Holds what the hooks learn for the steps after the play."""

    def __init__(self, req: Request, base: config.Settings) -> None:
        self.req = req
        self.base = base
        self.state = StateDir(Path(base.get("state_dir")))
        self.status = StatusFile(Path(base.get("status_file")))
        self.guard = secrets.SecretGuard()
        self.resolution: Resolution | None = None
        self.identified = False
        self.plan_ctx: signals.PlanContext | None = None
        self.planned: list[signals.Readiness] = []
        self.boot_run = True
        self.splay_s = 0.0

    def run(self) -> RunResult:
        self.status.update(phase="starting")
        redact_logs = _RedactFilter(self.guard)
        handlers = logging.getLogger("pullboot").handlers
        for handler in handlers:
            handler.addFilter(redact_logs)
        finished = False
        try:
            result = self._run_pipeline()
            report, path = result.report, result.report_path
            if path is None:
                path = self._write(report, None)
            report = self._ship(report, path)
            self.status.finish(status=report.status, exit_code=report.exit_code,
                               report=str(path) if path else None)
            finished = True
            # The journal's one line per run: with the reason, so that it says why.
            log.info("run %s finished: %s (exit %d) in %.1fs%s", report.run_id, report.status,
                     report.exit_code, report.duration_s,
                     f": {report.error['message']}" if report.error else "")
            return RunResult(report=report, report_path=path)
        finally:
            if not finished:  # a bug, not a run outcome: don't leave "running" behind
                self.status.finish(status=RunStatus.ERROR, exit_code=EXIT_PLAY_FAILED,
                                   report=None)
            for handler in handlers:
                handler.removeFilter(redact_logs)

    def _run_pipeline(self) -> RunResult:
        req = replace(self.req, on_phase=self._on_phase, on_identity=self._on_identity,
                      before_fetch=self._before_fetch, finalize=self._finalize,
                      secrets=self.guard, on_event=self._redacted_events(self.req.on_event))
        try:
            return pipeline.run(req)
        finally:
            for signal in self.planned:
                signal.stop()  # idempotent; here too in case the pipeline itself broke
            self.guard.cleanup()

    # -- hooks (called by pipeline.run) --------------------------------------------------------

    def _on_phase(self, phase: str, run_id: str) -> None:
        self.status.phase(phase, run_id)

    def _on_identity(self, settings: config.Settings, identity: Identity) -> None:
        # Planned before roles are validated, so that a bad or missing role
        # still gets its ABANDON/FAILURE instead of a stack waiting out its timeout.
        self.identified = True
        self.boot_run = _is_boot_run(self.state)
        self.plan_ctx = signals.PlanContext(settings, identity)
        self.planned = signals.plan_all(self.plan_ctx, boot_run=self.boot_run)
        for signal in self.planned:
            signal.start(self.req.cancel)

    def _before_fetch(self, res: Resolution) -> None:
        self.resolution = res
        template = res.settings.get("results.s3")
        if template:
            ship.check_template(template)
        settings = res.settings
        decision = splay.decide(
            splay=settings.get("splay"), stable=settings.get("splay_stable"),
            first_boot=_first_run(res), splay_first_boot=settings.get("splay_first_boot"),
            key=res.identity.instance_id or res.identity.hostname)
        if decision.seconds > 0:
            self.status.phase("splay")
        splay.wait(decision, self.req.cancel)
        self.splay_s = decision.seconds
        if self.req.cancel.is_set():
            return
        refs, vault = _secret_settings(settings)
        if refs or vault:
            self.status.phase("secrets")
            secrets.prepare(self.guard, refs=refs, vault=vault, region=res.identity.region,
                            private_dir=res.state.runner)

    # -- after the play --------------------------------------------------------------------------

    def _finalize(self, report: Report) -> Report:
        """The pipeline's finalize hook: heartbeats end, signals go, the outcome is final.

        Runs before the report is written and before success is recorded, so a
        strict signal that fails makes the run an error everywhere: the report,
        the exit code, and the next --only-if-changed (which runs again).
        """
        for signal in self.planned:
            signal.stop()  # heartbeats end with the play, whatever happened
        warnings = list(report.warnings)
        sent: list[dict[str, Any]] = []
        if not self.identified:
            if any(self.base.get(key) for key in SIGNAL_SWITCHES):
                warnings.append("readiness signals not sent: the run ended before the "
                                "instance identity was known")
                log.warning("%s", warnings[-1])
        elif self.planned:
            self.status.phase("signal")
            outcome = signals.Outcome(run_id=report.run_id, status=report.status,
                                      ok=report.status.ok, revision=report.source.revision)
            results = signals.send_all(self.planned, outcome, self.req.cancel)
            sent = [r.as_dict() for r in results]
            failed = [r for r in results if not r.ok]
            warnings += [f"signal {r.kind} failed: {r.detail}" for r in failed]
            strict = self.plan_ctx is not None and self.plan_ctx.settings.get("signals.strict")
            if failed and strict and report.exit_code == 0:
                report = replace(report, status=RunStatus.ERROR, exit_code=EXIT_PLAY_FAILED,
                                 error={
                    "stage": "signal", "type": "SignalError",
                    "message": f"readiness signal {failed[0].kind} failed: {failed[0].detail}",
                    "hint": "signals.strict is on: fix the signal, or turn it off"})
        if self.identified and self.boot_run:
            _mark_boot_run(self.state, report.run_id)
        report = replace(report, signals=sent, warnings=warnings, secrets=self.guard.names,
                         splay_s=self.splay_s)
        return self._redact(report)

    def _redact(self, report: Report) -> Report:
        redact = self.guard.redactor
        if not redact:
            return report
        text = json.dumps(report.to_dict(), default=str)
        clean = redact(text)
        return report if clean == text else Report.from_dict(json.loads(clean))

    def _write(self, report: Report, path: Path | None) -> Path | None:
        """Rewrite report.json with the boot fields (or write it, if the pipeline could not)."""
        try:
            if path is None:
                self.state.runs.mkdir(mode=0o700, parents=True, exist_ok=True)
                path = self.state.run_dir(report.run_id) / "report.json"
            write_json_atomic(path, report.to_dict())
        except OSError as exc:
            log.warning("could not write the report: %s", exc)
            return None
        return path

    def _ship(self, report: Report, path: Path | None) -> Report:
        res = self.resolution
        template = (res.settings if res is not None else self.base).get("results.s3")
        spool = ship.Spool(self.state.root / "spool")
        if not template and not spool.count():
            return report
        self.status.phase("ship")
        try:
            result = ship.deliver(
                report=report.to_dict(),
                events_file=Path(report.events_file) if report.events_file else None,
                template=template, region=res.identity.region if res else None, spool=spool,
                timeout=(res.settings if res else self.base).get("results.timeout"),
                keep=(res.settings if res else self.base).get("keep_runs"))
        except (PullbootError, OSError) as exc:
            message = f"results not shipped: {exc}"
            log.warning("%s", message)
            return self._rewrite(replace(report, warnings=[*report.warnings, message]), path)
        if result is None:
            return report
        warnings = list(report.warnings)
        if template and not result.ok:
            warnings.append(f"results not shipped ({result.error}); spooled for the next run")
        return self._rewrite(replace(report, shipped=result.as_dict(), warnings=warnings), path)

    def _rewrite(self, report: Report, path: Path | None) -> Report:
        if path is not None:
            self._write(report, path)
        return report

    def _redacted_events(self, on_event: Callable[[Mapping[str, Any]], None] | None
                         ) -> Callable[[Mapping[str, Any]], None] | None:
        """The live display gets events with secret values replaced, like events.jsonl."""
        if on_event is None:
            return None
        redact = self.guard.redactor

        def show(event: Mapping[str, Any]) -> None:
            if redact:
                event = json.loads(redact(json.dumps(event, default=str)))
            on_event(event)

        return show


class _RedactFilter(logging.Filter):
    """Replaces the run's secret values in every log line (installed on the CLI's handlers)."""

    def __init__(self, guard: secrets.SecretGuard) -> None:
        super().__init__()
        self.guard = guard

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.guard.redactor
        if redact:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True


def _secret_settings(settings: config.Settings
                     ) -> tuple[dict[str, secrets.SecretRef], secrets.SecretRef | None]:
    return secrets.parse_settings(settings.get("secret_vars"), settings.get("vault_password"))


def _first_run(res: Resolution) -> bool:
    """True when no earlier run of this instance is recorded in the state dir."""
    me = res.identity.instance_id
    return not any((r.get("instance") or {}).get("id") == me for r in res.state.reports())


def _is_boot_run(state: StateDir) -> bool:
    """True for the first run since the machine booted (once-per-boot signals are due)."""
    boot_id = current_boot_id()
    if boot_id is None:
        return True
    marker = read_json(state.root / BOOT_MARKER, dict, what="boot-run marker")
    return marker is None or marker.get("boot_id") != boot_id


def _mark_boot_run(state: StateDir, run_id: str) -> None:
    try:
        write_json_atomic(state.root / BOOT_MARKER,
                          {"boot_id": current_boot_id(), "run_id": run_id})
    except OSError as exc:
        log.warning("could not record the boot run: %s", exc)

