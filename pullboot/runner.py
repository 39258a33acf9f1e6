"""Run playbooks through ansible-runner, and nothing else.

One function (:func:`runner_kwargs`) builds ansible-runner's arguments from a
:class:`RunSpec`; :func:`run` calls it and cleans up what ansible-runner
leaves on disk that it should not: its ``command`` artifact holds the whole
process environment (credentials, tokens), so it is scrubbed as soon as the
play starts and again at the end, and old artifact dirs are rotated.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from pullboot import values
from pullboot.atomic import write_atomic, write_json_atomic
from pullboot.errors import RunError
from pullboot.playbooks import ansible_cfg_paths
from pullboot.secrets import SecretGuard, scrub_tree
from pullboot.values import safe_host_stem

log = logging.getLogger(__name__)

# Seconds between ansible-runner's checks of cancel and timeout; its default
# of 5 s would make SIGTERM feel ignored.
POLL_SECONDS: Final = 0.5


@dataclass(frozen=True)
class RunSpec:
    """Everything one ansible-runner invocation needs; built by the pipeline."""

    run_id: str
    private_dir: Path
    project_dir: Path
    playbooks: tuple[Path, ...]
    extravars: Mapping[str, Any]
    # Names in extravars whose values are data from untrusted origins: written
    # as ``!unsafe`` so that ansible never templates them (see write_vars_file).
    data_vars: frozenset[str] = frozenset()
    check: bool = False
    diff: bool = False
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    # ansible's --limit; the pipeline passes default_limit() when run.limit is unset,
    # and says so: then names of this host that no inventory lists are expected.
    limit: str | None = None
    # ``[label@]/abs/path`` for ``--vault-id``: ansible reads the password file itself.
    vault_ids: tuple[str, ...] = ()
    limit_is_default: bool = False
    # The tree's inventories (chosen by playbooks.inventories) and inline hosts.
    inventories: tuple[Path, ...] = ()
    inventory_hosts: tuple[str, ...] = ()
    verbosity: int = 0
    timeout: int = 0
    keep_artifacts: int = 5
    envvars: Mapping[str, str] = field(default_factory=dict)
    # Secrets of the run: when active, the raw-output artifacts (stdout,
    # stderr, partial event files) live in the guard's tmpfs scratch dir during
    # the play, stdout/stderr come back redacted, and whatever else is left in
    # the artifact dir is scrubbed of the secret values.
    guard: SecretGuard | None = None


@dataclass(frozen=True)
class RunOutcome:
    """ansible-runner's verdict: successful | failed | timeout | canceled, and rc."""

    status: str
    rc: int
    artifact_dir: Path


def run(spec: RunSpec, *, event_handler: Callable[[dict[str, Any]], bool],
        cancel_callback: Callable[[], bool]) -> RunOutcome:
    """Run the playbooks; events go to ``event_handler`` as they arrive."""
    import ansible_runner  # ~0.25 s; not needed by plan/status

    kwargs = runner_kwargs(spec)
    artifact_dir = spec.private_dir / "artifacts" / spec.run_id
    guard = spec.guard if spec.guard is not None and spec.guard.active else None
    if guard is not None:
        _raw_output_to_tmpfs(artifact_dir, guard)
    scrubbed = False

    def on_event(event: dict[str, Any]) -> bool:
        nonlocal scrubbed
        if not scrubbed:  # the command file exists once the first event arrives
            scrubbed = scrub_command_artifact(artifact_dir)
        return event_handler(event)

    try:
        with _prompt_pty():
            result = ansible_runner.run(**kwargs, event_handler=on_event,
                                        cancel_callback=cancel_callback)
    except Exception as exc:
        raise RunError(f"ansible-runner could not run the play: {exc}",
                       hint="run with -v for details; check ansible-core is installed") from exc
    finally:
        # Launch parameters (user-data may hold sensitive ones) do not outlive the run.
        vars_file(spec).unlink(missing_ok=True)
        scrub_command_artifact(artifact_dir)
        if guard is not None:
            _raw_output_back(artifact_dir, guard)
            for path in scrub_tree(artifact_dir, guard.redactor):
                log.info("scrubbed secret values from %s", path)
    return RunOutcome(status=str(result.status), rc=int(result.rc or 0),
                      artifact_dir=artifact_dir)


@contextmanager
def _prompt_pty() -> Iterator[None]:
    """Run ansible-runner's pexpect loop without pexpect's interactive-session sleeps.

    ansible-runner reads ansible-playbook's output through ``pexpect.spawn``,
    whose defaults suit a human at a terminal: a 0.1 ms sleep after every
    read of at most 2,000 bytes (``delayafterread``), and a fixed 0.1 s sleep
    in ``close()`` (ptyprocess ``delayafterclose``, "to give the kernel time
    to update process status"). ansible-runner only closes the child after
    it has been reaped, so that sleep always goes to waste: 0.1 s of every
    run, when a 3-task play takes 1-2 s (bench/RESULTS.md). Reading, events,
    cancel and timeouts are unchanged: only the sleeps go. Swapped in for the
    duration of the call; pullboot has no other pexpect user.
    """
    import pexpect  # type: ignore[import-untyped]

    original = pexpect.spawn

    class _Spawn(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.delayafterread = None
            if hasattr(self, "ptyproc") and hasattr(self.ptyproc, "delayafterclose"):
                self.ptyproc.delayafterclose = 0

    pexpect.spawn = _Spawn
    try:
        yield
    finally:
        pexpect.spawn = original


def runner_kwargs(spec: RunSpec) -> dict[str, Any]:
    """The one place that maps a RunSpec to ``ansible_runner.run`` arguments."""
    # -c local like ansible-pull: a host the tree's inventory names (this host's
    # name in a group) is this machine, never an SSH target.
    cmdline = ["--connection", "local",
               *(["--check"] if spec.check else []), *(["--diff"] if spec.diff else []),
               *(arg for vault_id in spec.vault_ids for arg in ("--vault-id", vault_id)),
               "-e", "@" + str(write_vars_file(spec))]
    kwargs: dict[str, Any] = {
        "private_data_dir": str(spec.private_dir),
        "project_dir": str(spec.project_dir),
        "ident": spec.run_id,
        "playbook": str(_entry_playbook(spec)),
        "inventory": [str(p) for p in _inventories(spec)],
        "envvars": _envvars(spec),
        "cmdline": shlex.join(cmdline),
        "tags": ",".join(spec.tags) or None,
        "skip_tags": ",".join(spec.skip_tags) or None,
        "limit": spec.limit,
        "verbosity": spec.verbosity or None,
        "timeout": spec.timeout or None,
        "rotate_artifacts": max(spec.keep_artifacts, 1),
        "quiet": True,
        # Otherwise ansible-runner writes extravars/envvars to env/ and then
        # silently reuses those files on the next run.
        "suppress_env_files": True,
        "settings": _settings(spec),
    }
    if spec.guard is not None and spec.guard.active:
        # ansible-runner's default jsonfile cache (artifacts/<id>/fact_cache)
        # would keep cacheable facts, secrets included, on disk.
        kwargs["fact_cache_type"] = "memory"
    return {k: v for k, v in kwargs.items() if v is not None}


def write_vars_file(spec: RunSpec) -> Path:
    """The extra vars as a 0600 JSON file for ``-e @file``; data vars marked unsafe.

    ansible templates extra vars wherever a play uses them, so a tag value
    holding ``{{ lookup('pipe', ...) }}`` would run as root. Every string of a
    data var becomes ``{"__ansible_unsafe": "..."}``, which ansible's JSON
    loader turns into an unsafe (never templated) string of exactly that text:
    no YAML re-typing (``1.10`` stays a string) and no tag that could make a
    Python type the walk misses (values are checked by
    :func:`pullboot.values.check_data` at resolution; unknown types fail here).
    The file holds launch parameters only (secrets reach ansible through the
    vars plugin) and is removed when the run ends.
    """
    path = vars_file(spec)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        doc = {name: values.as_unsafe_json(value, f"launch parameter {name!r}")
               if name in spec.data_vars else value for name, value in spec.extravars.items()}
        text = json.dumps(doc, allow_nan=False, default=_refuse_type)
    except ValueError as exc:
        raise RunError(f"the play's extra vars cannot be written: {exc}",
                       hint="launch parameters hold mappings, lists, strings, finite numbers, "
                       "booleans and null") from None
    write_atomic(path, text.encode("utf-8"), mode=0o600)
    return path


def vars_file(spec: RunSpec) -> Path:
    """Where :func:`write_vars_file` puts the run's extra vars."""
    return spec.private_dir / "env" / "pullboot-extravars.json"


def _refuse_type(value: Any) -> Any:
    raise ValueError(f"a {type(value).__name__} cannot be passed to ansible")


def _settings(spec: RunSpec) -> dict[str, Any]:
    # ansible-runner ignores the settings argument unless env/settings exists
    # (it resets them to {} when the file is missing), so the file is written
    # too. It holds no secrets: only how often to poll for cancel and timeout.
    settings = {"pexpect_timeout": POLL_SECONDS}
    path = spec.private_dir / "env" / "settings"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings), encoding="utf-8")
    return settings


def _entry_playbook(spec: RunSpec) -> Path:
    if len(spec.playbooks) == 1:
        return spec.playbooks[0]
    # Several roles: one ansible-playbook process, one stats block, plays in order.
    wrapper = spec.private_dir / "playbooks" / f"{spec.run_id}.yml"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(yaml.safe_dump([{"import_playbook": str(p)} for p in spec.playbooks]),
                       encoding="utf-8")
    return wrapper


def default_limit(*names: str) -> str:
    """ansible-pull's default ``--limit``: this host under each name an inventory may use.

    ``localhost``, the given names (fqdn, host name) and ``platform.node()``,
    each also without its domain, then ``127.0.0.1``. Only DNS host names
    count: a name that is not one never becomes a host pattern.
    """
    node = platform.node()
    every = [n for name in (*names, node) for n in (name, name.split(".")[0])]
    safe = [n for n in every if safe_host_stem(n)]
    return ",".join(dict.fromkeys(["localhost", *safe, "127.0.0.1"]))


def _inventories(spec: RunSpec) -> list[Path]:
    # Our localhost comes first so that the tree's own inventory can override it.
    folder = spec.private_dir / "inventory"
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "pullboot-localhost.yml"
    base.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local",
        # Discovery can pick a broken shim; the interpreter running us works.
        "ansible_python_interpreter": sys.executable,
    }}}}), encoding="utf-8")
    found = [base]
    listed = folder / "pullboot-hostlist.yml"
    listed.unlink(missing_ok=True)
    if spec.inventory_hosts:  # -i web1,web2: ansible's inline list, as a file (no parsing)
        listed.write_text(yaml.safe_dump({"all": {"hosts": dict.fromkeys(
            spec.inventory_hosts)}}), encoding="utf-8")
        found.append(listed)
    return [*found, *spec.inventories]


# Artifacts that hold raw play output while the play runs.
_RAW_ARTIFACTS: Final = ("job_events", "stdout", "stderr")


def _raw_output_to_tmpfs(artifact_dir: Path, guard: SecretGuard) -> None:
    """Symlink the raw-output artifacts into the tmpfs scratch dir before the play."""
    if guard.scratch is None:
        return
    artifact_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in _RAW_ARTIFACTS:
        link = artifact_dir / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(guard.scratch / name)


def _raw_output_back(artifact_dir: Path, guard: SecretGuard) -> None:
    """Replace the stdout/stderr links by redacted copies (job_events stays a dead link)."""
    for name in _RAW_ARTIFACTS[1:]:
        link = artifact_dir / name
        if not link.is_symlink():
            continue
        try:
            text = link.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            text = ""
        link.unlink()
        link.write_text(guard.redactor(text), encoding="utf-8", errors="surrogateescape")
        link.chmod(0o600)


def _envvars(spec: RunSpec) -> dict[str, str]:
    tmp = spec.private_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        # ansible-runner finds ansible-playbook on PATH: use the one beside us.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp),
        "ANSIBLE_REMOTE_TEMP": str(tmp),
    }
    cfg = spec.project_dir / "ansible.cfg"
    if cfg.is_file():
        env["ANSIBLE_CONFIG"] = str(cfg)
    # These env vars override the tree's ansible.cfg: so they carry its paths too.
    installed = spec.project_dir / ".pullboot" / "collections"
    if installed.is_dir():  # requirements.yml installed into the release
        default = "~/.ansible/collections:/usr/share/ansible/collections"
        tree_paths = ansible_cfg_paths(spec.project_dir, "collections_path")
        rest = (os.pathsep.join(str(p) for p in tree_paths) if tree_paths is not None
                else os.environ.get("ANSIBLE_COLLECTIONS_PATH", default))
        env["ANSIBLE_COLLECTIONS_PATH"] = f"{installed}{os.pathsep}{rest}"
    roles = ansible_cfg_paths(spec.project_dir, "roles_path") or [spec.project_dir / "roles"]
    env["ANSIBLE_ROLES_PATH"] = os.pathsep.join(
        str(p) for p in [*roles, spec.project_dir / ".pullboot" / "roles"])
    if spec.limit_is_default:  # not "Could not match supplied host pattern" every run
        env["ANSIBLE_HOST_PATTERN_MISMATCH"] = "ignore"
    env.update(spec.envvars)
    return env


def scrub_command_artifact(artifact_dir: Path) -> bool:
    """Drop the environment from ansible-runner's ``command`` artifact; True if done."""
    path = artifact_dir / "command"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if isinstance(data, dict) and "env" in data:
        data["env"] = "(removed by pullboot: the environment is not kept on disk)"
        write_json_atomic(path, data)
    return True


def scrub_all_artifacts(private_dir: Path) -> None:
    """Scrub every artifact dir (a killed run may have left its env behind)."""
    artifacts = private_dir / "artifacts"
    if artifacts.is_dir():
        for child in artifacts.iterdir():
            scrub_command_artifact(child)
