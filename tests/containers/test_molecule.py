"""The roles, tested as CI tests them: every molecule scenario, and ansible-lint.

Each scenario runs ``molecule test -s <name>`` (create, converge, idempotence, verify, destroy)
in a systemd container made from the locally built image. The session fixture builds that image
(``scripts/build-image``, cached) and unpacks the podman driver's collection
(``scripts/install-podman-collection``, cached). No podman means a failure, never a skip: CI
installs podman, so a missing one is a broken machine, not an optional feature.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "packaging" / "podman" / "containers.conf"
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
# Directories ansible-lint checks; the roles and playbooks are what instances run.
LINT_PATHS = ("roles/", "playbooks/", "inventory/", "molecule/")
TAIL_LINES = 120
SETUP_TIMEOUT_S = 900
SCENARIO_TIMEOUT_S = 1800
# Two test sessions on one machine (two clones, or `make test` twice at once) must not share
# containers or molecule's state: each session names its containers with its own id
# (molecule.yml: pullboot-molecule-<scenario>-${PULLBOOT_MOLECULE_RUN}) and keeps each
# scenario's ephemeral directory under its own temp dir.
RUN_ID = f"{os.getpid()}-{os.urandom(3).hex()}"
EPHEMERAL_ROOT = Path(tempfile.gettempdir()) / f"pullboot-molecule-{RUN_ID}"


def tool_env(scenario: str | None = None) -> dict[str, str]:
    """The environment for molecule and the scripts, taken from the test's own environment.

    The venv's bin comes first on PATH (molecule calls ansible-playbook and ansible-config),
    podman reads the project's containers.conf, and colours are off so failures read plainly.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    env["PYTHON"] = sys.executable
    env.update(NO_COLOR="1", PY_COLORS="0", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env["PULLBOOT_MOLECULE_RUN"] = RUN_ID
    if scenario is not None:
        env["MOLECULE_EPHEMERAL_DIRECTORY"] = str(EPHEMERAL_ROOT / scenario)
    return env


def tail(text: str, lines: int = TAIL_LINES) -> str:
    kept = text.splitlines()[-lines:]
    return "\n".join(kept)


def run(argv: list[str], *, timeout: float,
        scenario: str | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command at the repo root with stdout and stderr merged; return it and its seconds."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            cwd=REPO,
            env=tool_env(scenario),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
        pytest.fail(
            f"{' '.join(argv)} did not finish within {timeout:.0f}s; last output:\n{tail(out)}"
        )
    return proc, time.monotonic() - started


def require_tool(name: str, hint: str) -> None:
    if shutil.which(name, path=tool_env()["PATH"]) is None:
        pytest.fail(f"{name} is not installed: {hint}")


@pytest.fixture(scope="session")
def molecule_ready() -> None:
    """podman and molecule present, the image built and the podman collection unpacked."""
    require_tool("podman", "apt-get install -y podman runc debootstrap (CI installs it)")
    require_tool("molecule", "pip install molecule 'molecule-plugins[podman]' into this venv")
    for script in ("build-image", "install-podman-collection"):
        proc, seconds = run([str(REPO / "scripts" / script)], timeout=SETUP_TIMEOUT_S)
        if proc.returncode != 0:
            pytest.fail(
                f"scripts/{script} failed (exit {proc.returncode}, {seconds:.0f}s):\n"
                f"{tail(proc.stdout)}"
            )
        sys.stderr.write(proc.stdout)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(
    scenario: str, molecule_ready: None, record_property: Callable[[str, object], None]
) -> None:
    proc, seconds = run(["molecule", "test", "-s", scenario], timeout=SCENARIO_TIMEOUT_S,
                        scenario=scenario)
    record_property("seconds", round(seconds, 1))
    assert proc.returncode == 0, (
        f"molecule test -s {scenario} failed (exit {proc.returncode}, {seconds:.0f}s); "
        f"last {TAIL_LINES} lines:\n{tail(proc.stdout)}"
    )


def test_scenarios_cover_every_instance_role() -> None:
    """A playbook for an instance role without a scenario would go untested."""
    playbooks = {p.stem for p in (REPO / "playbooks").glob("*.yml")}
    assert {"default", "web", "worker", "base", "agent"} <= set(SCENARIOS)
    assert {"web", "worker", "agent", "local"} <= playbooks


def test_ansible_lint_production_profile() -> None:
    require_tool("ansible-lint", "pip install ansible-lint into this venv")
    argv = ["ansible-lint", "--offline", "--profile", "production", "--nocolor", *LINT_PATHS]
    proc, seconds = run(argv, timeout=SETUP_TIMEOUT_S)
    assert proc.returncode == 0 and "0 failure(s), 0 warning(s)" in proc.stdout, (
        f"{' '.join(argv)} reported problems (exit {proc.returncode}, {seconds:.0f}s):\n"
        f"{tail(proc.stdout)}"
    )
