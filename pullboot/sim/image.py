"""The simulator's "AMI": the base image plus pullboot, installed as an image build would.

Two layers, each cached:

1. ``localhost/pullboot-debian:bookworm``, made by ``scripts/build-image`` (debootstrap, no
   registry): Debian minbase with systemd, what a plain machine image offers.
2. ``localhost/pullboot-ami:<key>``: that image after ``playbooks/agent.yml`` (the
   ``pullboot_agent`` role) ran in it, exactly as a Packer build runs it on a builder
   instance: pullboot installed in ``/opt/pullboot`` from a wheel built from this checkout
   (``pip wheel --no-deps``), ``/etc/pullboot/pullboot.yml`` written, the units enabled.

The key is a digest of everything that ends up in the layer: the base image id, the
pullboot package files, the agent role and playbook, the inventory and :data:`RECIPE`. An
unchanged checkout finds its image at once. ``pullboot/sim`` itself is left out of the key:
it runs on the host and never inside an instance.

The builder container has no package index (and on some networks no TLS to PyPI): the wheel
and every dependency are downloaded on the host, for the image's Python and glibc, and
installed in the container with ``--no-index``. The role's own Ansible is bootstrapped the
same way into a throw-away ``--target`` dir, so the role does all the work, as it would over
SSH from a Packer build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from pullboot.errors import SimError
from pullboot.sim import NETWORK
from pullboot.sim.instance import wait_booted
from pullboot.sim.podman import Podman

BASE_IMAGE: Final = "localhost/pullboot-debian:bookworm"
AMI_REPO: Final = "localhost/pullboot-ami"
# Bump when the build steps below change, so cached images are rebuilt.
RECIPE: Final = "1"
# What Debian bookworm ships: wheels are downloaded for this interpreter and libc.
IMAGE_PYTHON: Final = (3, 11)
IMAGE_GLIBC_MINOR: Final = 36
BUILD_MOUNT: Final = "/mnt/pullboot-build"
BUILD_TIMEOUT_S: Final = 1800.0
# Inputs of the layer, relative to the checkout (directories are walked).
_KEY_INPUTS: Final = ("pyproject.toml", "pullboot", "roles/pullboot_agent", "playbooks/agent.yml",
                      "playbooks/common", "inventory")
_KEY_SKIP_DIRS: Final = frozenset({"__pycache__", "sim"})
_COPY_SKIP: Final = shutil.ignore_patterns("__pycache__", "*.pyc")

Line = Callable[[str], None]


@dataclass(frozen=True)
class ImageResult:
    """The image to boot, and whether it came from the cache."""

    name: str
    key: str
    cached: bool
    seconds: float
    base_cached: bool


def find_checkout() -> Path:
    """The pullboot source checkout this package runs from; SimError when it is installed."""
    root = Path(__file__).resolve().parents[2]
    needed = ("pyproject.toml", "scripts/build-image", "roles/pullboot_agent",
              "playbooks/agent.yml")
    if all((root / p).exists() for p in needed):
        return root
    raise SimError(
        "pullboot sim builds its machine image from a pullboot source checkout, and this "
        f"pullboot runs from {root}, which is not one",
        hint="clone the repository, run `make venv`, then `.venv/bin/pullboot sim boot ...` "
        "from the clone")


def image_key(checkout: Path, base_id: str) -> str:
    """Digest of the base image id, :data:`RECIPE` and every input file (path + content)."""
    digest = hashlib.sha256(f"{RECIPE}\0{base_id}\0".encode())
    for path in sorted(_key_files(checkout)):
        digest.update(path.relative_to(checkout).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def ensure_image(podman: Podman, checkout: Path, *, rebuild: bool = False, note: Line,
                 on_line: Line) -> ImageResult:
    """Return the instance image, building the missing layers (serialised by a lock).

    ``note`` gets progress messages, ``on_line`` the build's own output.
    """
    started = time.monotonic()
    with _build_lock():
        base_cached = _ensure_base(podman, checkout, note, on_line)
        key = image_key(checkout, podman.image_id(BASE_IMAGE))
        name = f"{AMI_REPO}:{key}"
        if not rebuild and podman.image_exists(name):
            return ImageResult(name, key, True, time.monotonic() - started, base_cached)
        note(f"building {name}: pullboot from this checkout, installed by the "
             "pullboot_agent role (once per change of pullboot or the role)")
        _build(podman, checkout, name, note, on_line)
        _prune_older(podman, keep=name)
    return ImageResult(name, key, False, time.monotonic() - started, base_cached)


def _key_files(checkout: Path) -> Iterator[Path]:
    for rel in _KEY_INPUTS:
        path = checkout / rel
        if path.is_file():
            yield path
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if d not in _KEY_SKIP_DIRS]
            yield from (Path(dirpath, f) for f in filenames if not f.endswith(".pyc"))


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    # Two simulated boots at once build the image once; the second waits, then finds it.
    lock_path = Path(tempfile.gettempdir()) / "pullboot-sim-image.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_base(podman: Podman, checkout: Path, note: Line, on_line: Line) -> bool:
    if podman.image_exists(BASE_IMAGE):
        return True
    note(f"building the base image {BASE_IMAGE} with debootstrap (once; about 2 minutes)")
    script = checkout / "scripts" / "build-image"
    proc = subprocess.Popen([str(script)], env={**podman.env, "PULLBOOT_IMAGE": BASE_IMAGE},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        on_line(line.rstrip("\n"))
    if proc.wait() != 0:
        raise SimError(f"scripts/build-image failed (exit {proc.returncode})",
                       hint="it needs root, podman and debootstrap: apt-get install -y podman "
                       "runc debootstrap")
    return False


def _build(podman: Podman, checkout: Path, name: str, note: Line, on_line: Line) -> None:
    with tempfile.TemporaryDirectory(prefix="pullboot-ami-") as tmp:
        ctx = Path(tmp)
        wheel = _wheelhouse(checkout, ctx / "dist", note)
        for rel in ("roles", "playbooks", "inventory"):
            shutil.copytree(checkout / rel, ctx / rel, ignore=_COPY_SKIP)
        (ctx / "vars.yml").write_text(yaml.safe_dump({
            "pullboot_agent_package": f"{BUILD_MOUNT}/dist/{wheel.name}",
            "pullboot_agent_pip_extra_args": f"--no-index --find-links {BUILD_MOUNT}/dist",
            "pullboot_agent_timer_start": False,
        }), encoding="utf-8")
        builder = f"pullboot-ami-build-{os.getpid()}"
        podman.remove_container(builder)
        podman.run("run", "-d", "--name", builder, "--systemd=always", "--network", NETWORK,
                   "-v", f"{ctx}:{BUILD_MOUNT}:ro", BASE_IMAGE, "/sbin/init")
        try:
            wait_booted(podman, builder, timeout=120.0)
            note("running playbooks/agent.yml (the pullboot_agent role) in the image")
            _exec_streamed(podman, builder, _BUILD_SCRIPT, on_line)
            podman.run("exec", builder, "sh", "-c", _CLEAN_SCRIPT)
            podman.run("stop", "--time", "30", builder, timeout=120)
            podman.run("commit", "--quiet", "--change", 'CMD ["/sbin/init"]',
                       "--change", "LABEL io.pullboot.sim.image=ami",
                       "--change", f"LABEL io.pullboot.sim.recipe={RECIPE}", builder, name,
                       timeout=600)
        finally:
            podman.remove_container(builder)


def _wheelhouse(checkout: Path, dist: Path, note: Line) -> Path:
    """pullboot's wheel from a copy of the checkout, and its dependencies for the image."""
    src = dist.parent / "src"
    src.mkdir()
    for rel in ("pyproject.toml", "README.md"):
        if (checkout / rel).is_file():
            shutil.copy2(checkout / rel, src / rel)
    shutil.copytree(checkout / "pullboot", src / "pullboot", ignore=_COPY_SKIP)
    note("building pullboot's wheel (pip wheel --no-deps) and fetching its dependencies")
    _pip("wheel", "--no-deps", "-w", str(dist), str(src))
    wheels = sorted(dist.glob("pullboot-*.whl"))
    if len(wheels) != 1:
        raise SimError(f"pip wheel made {len(wheels)} pullboot wheels in {dist}")
    arch = platform.machine()
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(IMAGE_GLIBC_MINOR, 16, -1)]
    platforms.append(f"manylinux2014_{arch}")
    major, minor = IMAGE_PYTHON
    _pip("download", "-d", str(dist), "--only-binary=:all:",
         *[arg for plat in platforms for arg in ("--platform", plat)],
         "--python-version", f"{major}.{minor}", "--implementation", "cp",
         "--abi", f"cp{major}{minor}", str(wheels[0]), "pip")
    return wheels[0]


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SimError(f"`pip {args[0]}` failed (exit {done.returncode}): "
                       f"{done.stderr.strip()[-1500:]}",
                       hint="the image build needs pullboot's dependencies as wheels from "
                       "your package index")


def _exec_streamed(podman: Podman, container: str, script: str, on_line: Line) -> None:
    proc = podman.popen("exec", "-e", "LANG=C.UTF-8", container, "sh", "-c", script)
    assert proc.stdout is not None
    watchdog = threading.Timer(BUILD_TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            on_line("  " + line.rstrip("\n"))
    finally:
        watchdog.cancel()
    if proc.wait() != 0:
        raise SimError(f"installing pullboot into the image failed (exit {proc.returncode})",
                       hint="see the playbooks/agent.yml output above")


def _prune_older(podman: Podman, *, keep: str) -> None:
    """Drop earlier builds of the layer (an edited checkout leaves one behind each time)."""
    listed = podman.run("images", "--format", "{{.Repository}}:{{.Tag}}",
                        "--filter", f"reference={AMI_REPO}", check=False).stdout.split()
    for old in listed:
        if old != keep:
            podman.run("rmi", old, check=False)  # in use by an instance: kept


# Ansible for the role, bootstrapped from the wheelhouse into a throw-away dir; then the
# role, through the repository's own inventory (localhost, connection local).
_BUILD_SCRIPT: Final = f"""set -eu
cd {BUILD_MOUNT}
echo "bootstrapping ansible-core for the build (not kept in the image)"
set -- dist/pip-*.whl
python3 "$1/pip" install --quiet --disable-pip-version-check --root-user-action=ignore \\
  --no-index --find-links dist --target /tmp/build-ansible ansible-core
export PYTHONPATH=/tmp/build-ansible ANSIBLE_ROLES_PATH={BUILD_MOUNT}/roles \\
  ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_LOCAL_TEMP=/tmp/build-ansible-tmp
python3 /tmp/build-ansible/bin/ansible-playbook -i inventory/hosts.yml playbooks/agent.yml \\
  -e @vars.yml
"""

# What an image build leaves out: caches, the apt lists (instances refresh them, judged by
# the lists directory's age), and the machine id, so each instance gets its own.
_CLEAN_SCRIPT: Final = """set -eu
rm -rf /tmp/build-ansible /tmp/build-ansible-tmp /root/.ansible /root/.cache
apt-get clean
rm -rf /var/lib/apt/lists/*
mkdir -p /var/lib/apt/lists/partial
touch -d @0 /var/lib/apt/lists
: >/etc/machine-id
"""
