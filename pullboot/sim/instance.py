"""One simulated instance: a systemd container booted from the image, seen from the host.

The container runs ``/sbin/init``; the image's enabled ``pullboot.service`` runs at boot as
on EC2. The host watches the instance through its journal: every entry of the unit is
streamed, and the run is over when systemd logs the result of the unit's start job (the
"Finished"/"Failed to start" entry carries ``JOB_TYPE=start`` and ``JOB_RESULT``). The run's
report is then read from the state dir.

The journal lives on a tmpfs podman mounts for systemd containers, so each boot of the
container starts with an empty journal.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pullboot.errors import SimError
from pullboot.sim import NETWORK
from pullboot.sim.podman import Podman

CONTAINER_PREFIX: Final = "pullboot-sim-"
LABEL: Final = "io.pullboot.sim"
BOOT_UNIT: Final = "pullboot.service"
# What pullboot.timer fires: `pullboot run --only-if-changed`.
CONVERGE_UNIT: Final = "pullboot-converge.service"
UNITS: Final = (BOOT_UNIT, CONVERGE_UNIT)
# Where the image's config (the pullboot_agent role's defaults) keeps runs.
RUNS_DIR: Final = "/var/lib/pullboot/runs"
DROPIN_NAME: Final = "50-pullboot-sim.conf"
_SYSTEMD_UP: Final = frozenset({"initializing", "starting", "running", "degraded",
                                "maintenance", "stopping"})
_POLL_S: Final = 0.25  # between tries while systemd's bus is not up yet
_TITLE: Final = re.compile(rb"<title>(.*?)</title>", re.I | re.S)

Line = Callable[[str], None]


@dataclass(frozen=True)
class UnitRun:
    """One run of a pullboot unit as observed from the host."""

    unit: str
    result: str  # systemd's JOB_RESULT: done, failed, timeout, ...
    seconds: float
    report: dict[str, Any] | None


@dataclass(frozen=True)
class PageCheck:
    """An HTTP GET of the instance's published port 80 on 127.0.0.1."""

    url: str
    status: int | None
    title: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def container_name(name: str) -> str:
    return CONTAINER_PREFIX + name


def dropin_text(env: dict[str, str]) -> str:
    """A systemd drop-in giving the pullboot units ``env`` (values quoted for systemd)."""
    lines = ["# Written by pullboot sim: what this simulated instance's pullboot needs.",
             "[Service]"]
    for key, value in sorted(env.items()):
        quoted = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
        lines.append(f'Environment="{key}={quoted}"')
    return "\n".join(lines) + "\n"


def create(podman: Podman, *, name: str, image: str, hostname: str, dropin: Path,
           mounts: Sequence[Path], ports: Sequence[int]) -> str:
    """Start the instance container (boot begins at once); return its name."""
    container = container_name(name)
    args = ["run", "-d", "--name", container, "--hostname", hostname, "--systemd=always",
            "--network", NETWORK, "--label", f"{LABEL}={name}"]
    for port in ports:
        args += ["-p", f"127.0.0.1::{port}"]
    for unit in UNITS:
        args += ["-v", f"{dropin}:/etc/systemd/system/{unit}.d/{DROPIN_NAME}:ro"]
    for path in mounts:
        args += ["-v", f"{path}:{path}:ro"]
    podman.run(*args, image, "/sbin/init", timeout=120)
    return container


def published_ports(podman: Podman, container: str) -> dict[int, int]:
    """Container port -> host port on 127.0.0.1."""
    out: dict[int, int] = {}
    for line in podman.run("port", container).stdout.splitlines():
        match = re.match(r"^(\d+)/tcp -> 127\.0\.0\.1:(\d+)$", line.strip())
        if match:
            out[int(match.group(1))] = int(match.group(2))
    return out


def wait_booted(podman: Podman, container: str, *, timeout: float) -> str:
    """Wait until systemd in ``container`` has finished starting; its state (running, ...)."""
    deadline = time.monotonic() + timeout
    _wait_systemd(podman, container, deadline)
    remaining = max(deadline - time.monotonic(), 1.0)
    return podman.run("exec", container, "systemctl", "is-system-running", "--wait",
                      check=False, timeout=remaining).stdout.strip()


def follow_boot(podman: Podman, container: str, *, before: set[str], timeout: float,
                on_line: Line) -> UnitRun:
    """Stream this boot's pullboot.service and wait for its result; then read its report.

    ``before`` holds the run ids that existed before the boot (:func:`run_ids`), so the
    report found is this boot's.
    """
    started = time.monotonic()
    deadline = started + timeout
    result = _follow(podman, container, BOOT_UNIT, None, deadline=deadline,
                     on_line=on_line)
    return UnitRun(BOOT_UNIT, result, time.monotonic() - started,
                   _new_report(podman, container, before))


def start_unit(podman: Podman, container: str, unit: str, *, timeout: float,
               on_line: Line) -> UnitRun:
    """Start ``unit`` now (what its timer would do), stream it, return its run and report."""
    started = time.monotonic()
    deadline = started + timeout
    before = run_ids(podman, container)
    cursor = _cursor(podman, container)
    outcome: dict[str, str] = {}

    def follow() -> None:
        outcome["result"] = _follow(podman, container, unit, cursor, deadline=deadline,
                                    on_line=on_line)

    follower = threading.Thread(target=follow, name="sim-journal", daemon=True)
    follower.start()
    # Blocks until the oneshot unit has finished; its exit status is in the journal entry.
    podman.run("exec", container, "systemctl", "start", unit, check=False,
               timeout=max(deadline - time.monotonic(), 1.0))
    follower.join(max(deadline - time.monotonic(), 1.0))
    if "result" not in outcome:
        raise SimError(f"{unit} in {container} gave no result within {timeout:.0f}s",
                       hint=f"podman exec {container} journalctl -u {unit}")
    return UnitRun(unit, outcome["result"], time.monotonic() - started,
                   _new_report(podman, container, before))


def reboot(podman: Podman, container: str) -> None:
    """Stop the container (systemd shuts down cleanly) and start it again: a reboot."""
    podman.run("restart", "--time", "30", container, timeout=180)


def check_page(port: int, *, timeout: float = 10.0) -> PageCheck:
    """GET http://127.0.0.1:PORT/; the port forwarder may need a moment after start."""
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    error = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read(65536)
                match = _TITLE.search(body)
                title = match.group(1).decode(errors="replace").strip() if match else None
                return PageCheck(url, resp.status, title)
        except urllib.error.HTTPError as exc:
            return PageCheck(url, exc.code, None, str(exc.reason))
        except (OSError, urllib.error.URLError) as exc:
            error = str(getattr(exc, "reason", exc))
            time.sleep(_POLL_S)
    return PageCheck(url, None, None, error)


def read_text(podman: Podman, container: str, path: str) -> str:
    """A file's content inside the instance."""
    return podman.run("exec", container, "cat", path).stdout


# -- internals ---------------------------------------------------------------------------------


def _wait_systemd(podman: Podman, container: str, deadline: float) -> None:
    """Poll until systemd answers on its bus (a second or so after the container starts)."""
    last = ""
    while time.monotonic() < deadline:
        done = podman.run("exec", container, "systemctl", "is-system-running", check=False)
        last = (done.stdout.strip() or done.stderr.strip())
        if last in _SYSTEMD_UP:
            return
        if not podman.container_exists(container) or _state(podman, container) != "running":
            raise SimError(f"container {container} stopped while booting",
                           hint=f"podman logs {container}")
        time.sleep(_POLL_S)
    raise SimError(f"systemd in {container} did not come up ({last})",
                   hint=f"podman logs {container}")


def _state(podman: Podman, container: str) -> str:
    return podman.run("inspect", "--format", "{{.State.Status}}", container,
                      check=False).stdout.strip()


def _cursor(podman: Podman, container: str) -> str | None:
    out = podman.run("exec", container, "journalctl", "-n", "0", "--show-cursor", "-q",
                     check=False).stdout
    match = re.search(r"-- cursor: (\S+)", out)
    return match.group(1) if match else None


def _follow(podman: Podman, container: str, unit: str, cursor: str | None, *,
            deadline: float, on_line: Line) -> str:
    """Stream ``unit``'s journal entries until systemd logs its start job's result."""
    _wait_systemd(podman, container, deadline)
    journal = ["journalctl", "--no-tail", "--follow", "--output", "json", "--unit", unit]
    if cursor:
        journal += ["--after-cursor", cursor]
    # Killing `podman exec` leaves the command running in the container, so the follower
    # first says its pid in there, to be stopped by it.
    proc = podman.popen("exec", container, "sh", "-c", 'echo "pid $$"; exec "$@"', "sh",
                        *journal, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(max(deadline - time.monotonic(), 1.0), proc.kill)
    watchdog.start()
    result: str | None = None
    inner_pid: str | None = None
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if inner_pid is None and raw.startswith("pid "):
                inner_pid = raw.split()[1]
                continue
            entry = _parse(raw)
            if entry is None:
                continue
            # Ansible modules log each invocation to the journal; the play's story is in
            # pullboot's own output and the report.
            if not str(entry.get("SYSLOG_IDENTIFIER", "")).startswith("ansible-"):
                on_line(_message(entry))
            if entry.get("UNIT") == unit and entry.get("JOB_TYPE") == "start" \
                    and entry.get("JOB_RESULT"):
                result = str(entry["JOB_RESULT"])
                break
    finally:
        watchdog.cancel()
        if inner_pid is not None and inner_pid.isdigit():
            podman.run("exec", container, "kill", inner_pid, check=False, timeout=30)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if result is None:
        raise SimError(f"{unit} in {container} did not finish before the deadline",
                       hint=f"podman exec {container} journalctl -u {unit}; raise --timeout")
    return result


def _parse(raw: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _message(entry: dict[str, Any]) -> str:
    message = entry.get("MESSAGE", "")
    if isinstance(message, list):  # journald sends non-UTF-8 messages as byte arrays
        message = bytes(message).decode(errors="replace")
    return str(message)


def run_ids(podman: Podman, container: str) -> set[str]:
    """The ids of the runs recorded in the instance's state dir."""
    done = podman.run("exec", container, "sh", "-c", f"ls -1 {RUNS_DIR} 2>/dev/null || true")
    return set(done.stdout.split())


def _new_report(podman: Podman, container: str, before: set[str]) -> dict[str, Any] | None:
    """The report of the run that appeared since ``before`` (the latest, if several)."""
    fresh = sorted(run_ids(podman, container) - before)
    reports: list[dict[str, Any]] = []
    for run_id in fresh:
        done = podman.run("exec", container, "cat", f"{RUNS_DIR}/{run_id}/report.json",
                          check=False)
        data = _parse(done.stdout) if done.returncode == 0 else None
        if data is not None:
            reports.append(data)
    if not reports:
        return None
    return max(reports, key=lambda r: (r.get("sequence") or 0, str(r.get("run_id"))))
