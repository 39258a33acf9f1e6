"""The emulators a simulated instance talks to, in a small daemon that outlives the command.

``pullboot sim boot`` returns once the instance has converged, but the instance lives on:
its timer runs pullboot again, a reboot asks IMDS again. So the emulators run in a
detached process (``pullboot sim serve --name NAME``) until ``pullboot sim down``:

* the IMDSv2 emulator (:class:`~pullboot.sim.imds.FakeIMDS`) with the instance's identity,
  tags (instance metadata tags enabled) and user-data;
* a moto S3 server, only when the source is ``s3://``, holding the bundle(s) built from the
  ``--bundle`` tree.

Both listen on 127.0.0.1 with ephemeral ports. The daemon reports its endpoints with one JSON
line on stdout once everything listens, then keeps quiet (its log is ``daemon.log`` in the
instance's directory). SIGHUP makes it read ``spec.json`` again and serve the new tags and
user-data (``pullboot sim tag``); SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from pullboot.atomic import write_json_atomic
from pullboot.errors import SimError
from pullboot.sim.imds import FakeIMDS
from pullboot.sim.s3 import MotoServer, publish
from pullboot.sim.spec import INSTANCE_IP, ROLE_TAG, InstanceSpec

SIM_DIR_ENV: Final = "PULLBOOT_SIM_DIR"
DAEMON_FILE: Final = "daemon.json"
LOG_FILE: Final = "daemon.log"
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 15.0
_SIGNALS: Final = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@dataclass(frozen=True)
class Endpoints:
    """Where the daemon serves (host view), and what it published."""

    pid: int
    imds: str
    s3: str | None = None
    bundles: tuple[str, ...] = ()

    def save(self, directory: Path) -> None:
        write_json_atomic(directory / DAEMON_FILE, asdict(self))

    @classmethod
    def load(cls, directory: Path) -> Endpoints | None:
        try:
            data = json.loads((directory / DAEMON_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        data["bundles"] = tuple(data.get("bundles") or ())
        return cls(**data)


class SimServers:
    """The emulators for one spec. The constructor does no I/O."""

    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self.imds = FakeIMDS(
            instance_id=spec.instance_id, region=spec.region,
            instance_type=spec.instance_type, image_id=_image_id(spec),
            private_ip=INSTANCE_IP, tags=spec.all_tags(), user_data=spec.user_data_bytes(),
            pending_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.moto: MotoServer | None = None

    def start(self) -> Endpoints:
        self.imds.start()
        if self.spec.source_kind() != "s3":
            return Endpoints(pid=os.getpid(), imds=self.imds.url)
        self.moto = MotoServer(region=self.spec.region)
        self.moto.start()
        source = self.spec.served_source()
        assert source is not None
        roles = [r for r in self.spec.all_tags().get(ROLE_TAG, "").split(",") if r]
        bundles = publish(self.moto.url, region=self.spec.region, source_url=source,
                          roles=roles, tree=Path(self.spec.bundle or "."))
        return Endpoints(pid=os.getpid(), imds=self.imds.url, s3=self.moto.url,
                         bundles=tuple(bundles))

    def reload(self, spec: InstanceSpec) -> None:
        """Serve ``spec``'s tags and user-data from now on (identity stays)."""
        self.spec = spec
        self.imds.tags = spec.all_tags()
        self.imds.user_data = spec.user_data_bytes()

    def stop(self) -> None:
        if self.moto is not None:
            self.moto.stop()
        self.imds.stop()


def serve(directory: Path, *, announce: Callable[[dict[str, Any]], None]) -> None:
    """The daemon's body: start the servers, ``announce`` them, serve until SIGTERM/SIGINT.

    The signals are blocked before any thread starts and taken with ``sigwait`` here, so no
    handler ever runs inside a server thread.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    servers = SimServers(InstanceSpec.load(directory))
    try:
        endpoints = servers.start()
        endpoints.save(directory)
        announce(asdict(endpoints))
        while True:
            signum = signal.sigwait(_SIGNALS)
            if signum != signal.SIGHUP:
                return
            servers.reload(InstanceSpec.load(directory))
    finally:
        servers.stop()


def spawn(directory: Path, name: str) -> Endpoints:
    """Start the daemon for the instance in ``directory``; return once it serves."""
    log_path = directory / LOG_FILE
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pullboot", "sim", "serve", "--name", name],
            env={**os.environ, SIM_DIR_ENV: str(directory.parent)}, cwd="/",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
            start_new_session=True)  # a Ctrl-C at the terminal must not take IMDS away
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    try:
        data = json.loads(line)
        return Endpoints(**{**data, "bundles": tuple(data.get("bundles") or ())})
    except (ValueError, TypeError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-1500:]
        raise SimError(f"the simulator's servers did not start:\n{tail}",
                       hint=f"see {log_path}") from None


def stop(directory: Path, name: str) -> bool:
    """Stop the instance's daemon if it runs; True if one was stopped."""
    endpoints = Endpoints.load(directory)
    if endpoints is None or not _is_our_daemon(endpoints.pid, name):
        return False
    try:
        pidfd = os.pidfd_open(endpoints.pid)
    except ProcessLookupError:
        return False
    try:
        os.kill(endpoints.pid, signal.SIGTERM)
        exited, _, _ = select.select([pidfd], [], [], STOP_TIMEOUT_S)
        if not exited:
            os.kill(endpoints.pid, signal.SIGKILL)
            select.select([pidfd], [], [], STOP_TIMEOUT_S)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
    return True


def reload(directory: Path, name: str, *, timeout: float = 10.0) -> dict[str, str]:
    """Make the daemon serve the saved spec's tags and user-data; return the tags served.

    Returns once the emulator answers with the new tags, read the way the instance reads
    them (pullboot's own IMDS client).
    """
    from pullboot.identity import read_identity
    from pullboot.imds import ImdsClient, ImdsOptions

    endpoints = Endpoints.load(directory)
    if endpoints is None or not _is_our_daemon(endpoints.pid, name):
        raise SimError(f"the servers of simulated instance {name!r} are not running",
                       hint=f"pullboot sim boot --name {name} ...")
    wanted = InstanceSpec.load(directory).all_tags()
    os.kill(endpoints.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    served: dict[str, str] = {}
    while time.monotonic() < deadline:
        client = ImdsClient(ImdsOptions(endpoint=endpoints.imds, timeout=2.0, budget=5.0))
        served = dict(read_identity(client, read_tags=True).tags)
        if served == wanted:
            return served
        time.sleep(0.1)  # the daemon handles SIGHUP between two requests
    raise SimError(f"the IMDS emulator still serves tags {served} after {timeout:.0f}s",
                   hint=f"see {directory / LOG_FILE}")


def _is_our_daemon(pid: int, name: str) -> bool:
    """Whether ``pid`` is this instance's daemon (never signal a recycled pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in argv and name.encode() in argv and b"sim" in argv


def _image_id(spec: InstanceSpec) -> str:
    # Stable per instance, shaped like EC2's.
    return "ami-" + spec.instance_id[2:].rjust(17, "0")[:17]
