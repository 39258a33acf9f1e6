"""The simulator's commands: boot, converge, reboot, tag, down. The CLI renders their results.

Each simulated instance has a name (default ``default``) and a directory under
:func:`sim_home` holding its spec, the daemon's endpoints and log, and the systemd drop-in
given to the container. ``boot`` replaces an instance of the same name.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from pullboot.atomic import write_json_atomic
from pullboot.errors import SimError
from pullboot.sim import instance, servers
from pullboot.sim.image import ImageResult, ensure_image, find_checkout
from pullboot.sim.instance import BOOT_UNIT, CONVERGE_UNIT, PageCheck, UnitRun
from pullboot.sim.podman import Podman
from pullboot.sim.servers import Endpoints
from pullboot.sim.spec import INSTANCE_IP, InstanceSpec

DEFAULT_NAME: Final = "default"
DEFAULT_TIMEOUT_S: Final = 900.0
WEB_PORT: Final = 80
_INSTANCE_FILE: Final = "instance.json"

Line = Callable[[str], None]


def sim_home() -> Path:
    """Where simulated instances keep their files: ``$PULLBOOT_SIM_DIR``, else XDG state."""
    explicit = os.environ.get(servers.SIM_DIR_ENV)
    if explicit:
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pullboot" / "sim"


@dataclass(frozen=True)
class BootResult:
    """A simulated launch: the image used, the servers, the boot run and the page check."""

    name: str
    container: str
    image: ImageResult
    instance_id: str
    endpoints: Endpoints
    ports: Mapping[int, int]
    run: UnitRun
    page: PageCheck | None
    replaced: bool
    seconds: float


@dataclass(frozen=True)
class RunResult:
    """A later run on a simulated instance (timer unit, or the boot run after a reboot)."""

    name: str
    container: str
    run: UnitRun
    page: PageCheck | None


@dataclass(frozen=True)
class DownResult:
    name: str
    container_removed: bool
    servers_stopped: bool


class Simulator:
    """Simulated instances, driven through podman. The constructor does no I/O.

    ``note`` receives the simulator's progress messages, ``stream`` the instance's journal
    (and image build output) line by line.
    """

    def __init__(self, *, note: Line, stream: Line, home: Path | None = None) -> None:
        self.note = note
        self.stream = stream
        self.home = home or sim_home()

    def boot(self, spec: InstanceSpec, *, rebuild: bool = False, image_name: str | None = None,
             timeout: float = DEFAULT_TIMEOUT_S) -> BootResult:
        """Build/find the image, start the servers, boot the instance, wait for the boot run.

        ``image_name`` boots that image as it is (e.g. one ``image()`` returned earlier), for
        launches that must not depend on the checkout changing meanwhile.
        """
        started = time.monotonic()
        checkout = find_checkout()
        podman = Podman.locate(checkout)
        for path in spec.mounts():
            if not path.exists():
                raise SimError(f"source path {path} does not exist", hint="check --source")
        directory = self.home / spec.name
        replaced = (directory.exists()
                    or podman.container_exists(instance.container_name(spec.name)))
        if replaced:
            self.note(f"replacing the simulated instance {spec.name!r}")
            self._down(podman, spec.name)
        image = (_given_image(podman, image_name) if image_name
                 else ensure_image(podman, checkout, rebuild=rebuild, note=self.note,
                                   on_line=self.stream))
        self.note(f"image {image.name}: "
                  + (f"cached (found in {image.seconds:.1f}s)" if image.cached
                     else f"built in {image.seconds:.0f}s"))
        spec.save(directory)
        endpoints = servers.spawn(directory, spec.name)
        try:
            container = self._create(podman, spec, image, endpoints, directory)
        except BaseException:
            servers.stop(directory, spec.name)
            raise
        self.note(f"booting {spec.instance_id} (container {container}); "
                  f"streaming {BOOT_UNIT}")
        run = instance.follow_boot(podman, container, before=set(), timeout=timeout,
                                   on_line=self.stream)
        ports = instance.published_ports(podman, container)
        _save_instance(directory, container=container, image=image.name, ports=ports)
        return BootResult(name=spec.name, container=container, image=image,
                          instance_id=spec.instance_id, endpoints=endpoints, ports=ports,
                          run=run, page=self._page(podman, container, ports), replaced=replaced,
                          seconds=time.monotonic() - started)

    def image(self, *, rebuild: bool = False) -> ImageResult:
        """Build the instance image, or find it cached (what ``boot`` does first)."""
        checkout = find_checkout()
        return ensure_image(Podman.locate(checkout), checkout, rebuild=rebuild, note=self.note,
                            on_line=self.stream)

    def converge(self, name: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> RunResult:
        """Run the timer's unit now (``pullboot run --only-if-changed``) and wait for it."""
        podman, container = self._running(name)
        self.note(f"starting {CONVERGE_UNIT} in {container} (what pullboot.timer runs)")
        run = instance.start_unit(podman, container, CONVERGE_UNIT, timeout=timeout,
                                  on_line=self.stream)
        ports = instance.published_ports(podman, container)
        return RunResult(name, container, run, self._page(podman, container, ports))

    def reboot(self, name: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> RunResult:
        """Reboot the instance and wait for its boot run."""
        podman, container = self._running(name)
        before = instance.run_ids(podman, container)
        self.note(f"rebooting {container}; streaming {BOOT_UNIT}")
        instance.reboot(podman, container)
        run = instance.follow_boot(podman, container, before=before, timeout=timeout,
                                   on_line=self.stream)
        ports = instance.published_ports(podman, container)
        _save_instance(self.home / name, container=container,
                       image=_load_instance(self.home / name).get("image", ""), ports=ports)
        return RunResult(name, container, run, self._page(podman, container, ports))

    def tag(self, name: str, *, set_tags: Mapping[str, str],
            remove: Sequence[str] = ()) -> dict[str, str]:
        """Change the instance's tags, as `aws ec2 create-tags` would; returns all tags served."""
        directory = self.home / name
        spec = _load_spec(directory, name)
        tags = {k: v for k, v in spec.tags.items() if k not in remove}
        tags.update(set_tags)
        roles = spec.roles
        if "pullboot:role" in remove:
            roles = ()
        spec = replace(spec, tags=tags, roles=roles)
        spec.save(directory)
        return servers.reload(directory, name)

    def down(self, name: str) -> DownResult:
        """Remove the instance's container, stop its servers, delete its files."""
        podman = Podman.locate(_checkout_or_none())
        return self._down(podman, name)

    # -- internals ---------------------------------------------------------------------------

    def _down(self, podman: Podman, name: str) -> DownResult:
        container = instance.container_name(name)
        removed = podman.container_exists(container)
        podman.remove_container(container)
        directory = self.home / name
        stopped = servers.stop(directory, name)
        if directory.exists():
            shutil.rmtree(directory)
        return DownResult(name, removed, stopped)

    def _create(self, podman: Podman, spec: InstanceSpec, image: ImageResult,
                endpoints: Endpoints, directory: Path) -> str:
        self.note(f"IMDS emulator on {endpoints.imds}; tags "
                  + ", ".join(f"{k}={v}" for k, v in spec.all_tags().items()))
        if endpoints.s3:
            self.note(f"S3 (moto) on {endpoints.s3}; published {', '.join(endpoints.bundles)}")
        env = spec.unit_environment(imds_url=endpoints.imds, s3_url=endpoints.s3)
        dropin = directory / instance.DROPIN_NAME
        dropin.write_text(instance.dropin_text(env), encoding="utf-8")
        podman.remove_container(instance.container_name(spec.name))
        return instance.create(podman, name=spec.name, image=image.name,
                               hostname="ip-" + INSTANCE_IP.replace(".", "-"), dropin=dropin,
                               mounts=spec.mounts(), ports=spec.ports)

    def _running(self, name: str) -> tuple[Podman, str]:
        podman = Podman.locate(_checkout_or_none())
        container = instance.container_name(name)
        if not podman.container_exists(container):
            raise SimError(f"no simulated instance {name!r} is running",
                           hint=f"pullboot sim boot --name {name} --role ROLE --source URL")
        return podman, container

    def _page(self, podman: Podman, container: str,
              ports: Mapping[int, int]) -> PageCheck | None:
        """GET the instance's port 80 through 127.0.0.1, if something listens on it inside."""
        if WEB_PORT not in ports:
            return None
        listening = podman.run("exec", container, "ss", "-Hltn", f"sport = :{WEB_PORT}",
                               check=False).stdout.strip()
        if not listening:
            return None
        return instance.check_page(ports[WEB_PORT])


def _given_image(podman: Podman, name: str) -> ImageResult:
    started = time.monotonic()
    if not podman.image_exists(name):
        raise SimError(f"image {name} does not exist", hint="pullboot sim image builds it")
    return ImageResult(name, name.rpartition(":")[2], True, time.monotonic() - started, True)


def _checkout_or_none() -> Path | None:
    try:
        return find_checkout()
    except SimError:
        return None


def _load_spec(directory: Path, name: str) -> InstanceSpec:
    if not (directory / "spec.json").is_file():
        raise SimError(f"no simulated instance {name!r} is running",
                       hint=f"pullboot sim boot --name {name} --role ROLE --source URL")
    return InstanceSpec.load(directory)


def _save_instance(directory: Path, *, container: str, image: str,
                   ports: Mapping[int, int]) -> None:
    data = {"container": container, "image": image, "ports": {str(k): v for k, v in ports.items()}}
    write_json_atomic(directory / _INSTANCE_FILE, data)


def _load_instance(directory: Path) -> dict[str, str]:
    try:
        data = json.loads((directory / _INSTANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)}
