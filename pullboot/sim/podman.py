"""The podman command line, as the simulator uses it: one runner, errors with context.

podman reads ``CONTAINERS_CONF``. When it is not set, the checkout's
``packaging/podman/containers.conf`` is used, as every other podman user in this repository
does (scripts/build-image, molecule, CI): it selects runc and drops podman's default nofile
ulimit, both needed on the machines this project runs on.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pullboot.errors import PodmanError, SimError

log = logging.getLogger(__name__)

INSTALL_HINT: Final = ("install podman (Debian: apt-get install -y podman runc debootstrap "
                       "slirp4netns uidmap)")


@dataclass(frozen=True)
class Podman:
    """Runs ``podman``; ``env`` is the full environment given to it."""

    binary: str
    env: Mapping[str, str]

    @classmethod
    def locate(cls, checkout: Path | None) -> Podman:
        """Find podman on PATH (SimError naming the fix if absent) and pick CONTAINERS_CONF."""
        binary = shutil.which("podman")
        if binary is None:
            raise SimError("podman is not installed: the simulator boots instances as "
                           "containers", hint=INSTALL_HINT)
        env = dict(os.environ)
        if not env.get("CONTAINERS_CONF") and checkout is not None:
            conf = checkout / "packaging" / "podman" / "containers.conf"
            if conf.is_file():
                env["CONTAINERS_CONF"] = str(conf)
        return cls(binary=binary, env=env)

    def run(self, *args: str, check: bool = True, timeout: float | None = None,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS`` and capture its output; PodmanError if it fails and ``check``."""
        log.debug("podman %s", " ".join(args))
        try:
            done = subprocess.run([self.binary, *args], env=dict(self.env), text=True,
                                  capture_output=True, timeout=timeout, input=input_text,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise SimError(f"`podman {' '.join(args)}` did not finish within {timeout:.0f}s",
                           hint="check `podman ps` and the container's journal") from exc
        if check and done.returncode != 0:
            raise PodmanError(args, done.returncode, done.stderr)
        return done

    def popen(self, *args: str, stdout: int | None = subprocess.PIPE,
              stderr: int | None = subprocess.STDOUT) -> subprocess.Popen[str]:
        """Start ``podman ARGS`` with its output piped as text lines (the caller reaps it)."""
        log.debug("podman %s &", " ".join(args))
        return subprocess.Popen([self.binary, *args], env=dict(self.env), text=True,
                                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                bufsize=1)

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def image_id(self, name: str) -> str:
        return self.run("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()

    def container_exists(self, name: str) -> bool:
        return self.run("container", "exists", name, check=False).returncode == 0

    def remove_container(self, name: str) -> None:
        """Stop (systemd gets its stop signal) and remove ``name``; fine if it is absent."""
        if self.container_exists(name):
            # `podman rm --force` does not send the image's stop signal (SIGRTMIN+3, which
            # systemd takes as "shut down"), so it waits out its timeout: stop, then remove.
            self.run("stop", "--time", "30", name, check=False, timeout=120)
            self.run("rm", "--force", name, timeout=120)
