"""Secrets for the play from SSM Parameter Store and Secrets Manager, kept off disk.

``secret_vars`` maps play variable names to references::

    secret_vars:
      db_password: ssm:/prod/db/password          # SecureString, decrypted
      api_token: secretsmanager:prod/api           # SecretString
      db_user: secretsmanager:prod/db#username     # one field of a JSON secret

and ``vault_password`` names the ansible-vault password the same way.

How a value reaches the play without touching disk: pullboot hands the
ansible process only the *references* (env ``PULLBOOT_SECRET_VARS``), and a vars
plugin shipped in this package (``pullboot/ansible_plugins/vars``, put on
``ANSIBLE_VARS_PLUGINS``) fetches the values inside ansible-playbook with the
instance role. The vault password comes the same way from a password "script"
(``ANSIBLE_VAULT_PASSWORD_FILE``) whose file holds no secret. Nothing secret is
an extra var (the ``command`` artifact and ``ps`` show those) or an env var.

pullboot also fetches the values, in memory only, to register them with the
:class:`~pullboot.events.Redactor` of the run: events.jsonl, the report and
log lines are redacted, ansible-runner's stdout/stderr artifacts are not
written, its per-event partial files and ansible's temporary files (module
arguments, rendered content) go to a tmpfs scratch dir, and every file left
in the run's artifact dir is scrubbed after the play (see :mod:`pullboot.runner`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pullboot.atomic import write_atomic
from pullboot.bounded import load_json
from pullboot.errors import PullbootError, SecretError
from pullboot.events import Redactor

log = logging.getLogger(__name__)

ENV_VARS: Final = "PULLBOOT_SECRET_VARS"
ENV_VAULT: Final = "PULLBOOT_VAULT_PASSWORD_REF"
ENV_REGION: Final = "PULLBOOT_SECRETS_REGION"
PLUGIN_DIR: Final = Path(__file__).resolve().parent / "ansible_plugins" / "vars"
DEFAULT_VARS_PLUGIN_PATH: Final = "~/.ansible/plugins/vars:/usr/share/ansible/plugins/vars"
# What ansible (or a tree's ansible.cfg) would otherwise write to disk with
# output or variables in it while secrets are in play: the log file (the whole
# display), the fact cache (set_fact cacheable, left behind by a killed run)
# and kept module files. The environment wins over ansible.cfg.
NO_DISK_ANSIBLE_ENV: Final = {
    "ANSIBLE_LOG_PATH": os.devnull,
    "ANSIBLE_CACHE_PLUGIN": "memory",
    "ANSIBLE_KEEP_REMOTE_FILES": "False",
}
# pullboot-PID-xxxx (a run's scratch dir) or pullboot-git-PID-xxxx (a deploy key).
_STALE_RE: Final = re.compile(r"pullboot-(?:git-)?(\d+)-\w+")
# Memory-backed places for ansible's temporary files, first usable one wins.
TMPFS_CANDIDATES: Final = ("/dev/shm", "/run")  # noqa: S108 - private mkdtemp inside


# Kinds of reference, by where they may be used: the play's secrets come from
# the AWS stores only (the vars plugin fetches them inside ansible-playbook);
# git credentials may also name pullboot's environment or a local file.
AWS_KINDS: Final = ("ssm", "secretsmanager")
ALL_KINDS: Final = (*AWS_KINDS, "env", "file")
_HINTS: Final = {"ssm": "ssm:NAME", "secretsmanager": "secretsmanager:ID[#field]",
                 "env": "env:VAR", "file": "a path (/..., ~/..., ./...) or file:PATH"}


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: ``ssm:NAME``, ``secretsmanager:ID[#json-field]``,
    ``env:VAR`` or ``file:PATH`` (a bare path starting with ``/``, ``~`` or ``.`` too).

    The one parser of secret references in pullboot.
    """

    kind: str
    name: str
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f"#{self.field}" if self.field else "")

    @classmethod
    def parse(cls, text: Any, *, where: str, kinds: tuple[str, ...] = AWS_KINDS) -> SecretRef:
        """Parse ``text``, allowing only ``kinds``; SecretError names ``where`` and the forms."""
        if isinstance(text, str):
            kind, sep, rest = text.partition(":")
            if sep and kind in kinds and rest:
                name, _, fld = rest.partition("#") if kind == "secretsmanager" else (rest, "", "")
                if name:
                    return cls(kind, name, fld or None)
            elif "file" in kinds and text.startswith(("/", "~", ".")):
                return cls("file", text)
        shown = repr(text)[:60] if isinstance(text, str) else type(text).__name__
        raise SecretError(f"{where}: {shown} is not a secret reference",
                          hint="write " + " or ".join(_HINTS[k] for k in kinds))


def resolve(text: str, *, region: str | None, what: str,
            kinds: tuple[str, ...] = ALL_KINDS) -> str:
    """Parse ``text`` and fetch the secret it names (for one setting, ``what``)."""
    return fetch({what: SecretRef.parse(text, where=what, kinds=kinds)}, region=region)[what]


def _fetch_ssm(ref: SecretRef, client: Callable[[str], Any]) -> str:
    answer = client("ssm").get_parameter(Name=ref.name, WithDecryption=True)
    return str(answer["Parameter"]["Value"])


def _fetch_secretsmanager(ref: SecretRef, client: Callable[[str], Any]) -> str:
    answer = client("secretsmanager").get_secret_value(SecretId=ref.name)
    if "SecretString" in answer:
        value = str(answer["SecretString"])
    else:
        try:
            value = bytes(answer.get("SecretBinary") or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"{ref}: the secret is binary and not UTF-8 text",
                              hint="store it as a SecretString") from None
    if ref.field is None:
        return value
    try:
        item = load_json(value, what=f"{ref}", error=SecretError)[ref.field]
    except SecretError:  # a ValueError too, but it names the limit
        raise
    except (ValueError, KeyError, TypeError):
        raise SecretError(f"{ref}: the secret is not a JSON object with the field "
                          f"{ref.field!r}") from None
    return item if isinstance(item, str) else json.dumps(item)


def _fetch_env(ref: SecretRef, client: Callable[[str], Any]) -> str:
    value = os.environ.get(ref.name)
    if value is None:
        raise SecretError(f"{ref}: environment variable {ref.name} is not set",
                          hint=f"set {ref.name}, or use ssm: or secretsmanager:")
    return value


def _fetch_file(ref: SecretRef, client: Callable[[str], Any]) -> str:
    try:
        return Path(ref.name).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise SecretError(f"{ref}: cannot read {ref.name}: {reason}",
                          hint="check the path and that pullboot can read it") from None


# Secret stores, keyed by the reference's kind.
FETCHERS: Final[dict[str, Callable[[SecretRef, Callable[[str], Any]], str]]] = {
    "ssm": _fetch_ssm, "secretsmanager": _fetch_secretsmanager,
    "env": _fetch_env, "file": _fetch_file,
}


def fetch(refs: Mapping[str, SecretRef], *, region: str | None) -> dict[str, str]:
    """Fetch every reference (name -> value) with the instance role; SecretError on failure.

    The one fetch path for secrets; values are never logged.
    """
    from botocore.exceptions import ClientError, NoCredentialsError

    from pullboot import aws

    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = aws.client(service, region=region)
        return clients[service]

    values: dict[str, str] = {}
    for name, ref in refs.items():
        try:
            values[name] = FETCHERS[ref.kind](ref, client)
        except NoCredentialsError:
            raise SecretError(f"no AWS credentials to read {ref} (for {name})",
                              hint="attach an instance profile allowed to read it") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise SecretError(f"cannot read {ref} (for {name}): {code}",
                              hint="check the name, the region and that the instance role "
                              "may read it (ssm:GetParameter + kms:Decrypt, or "
                              "secretsmanager:GetSecretValue)") from None
        except aws.CALL_ERRORS as exc:
            raise SecretError(f"cannot read {ref} (for {name}): {aws.describe_failure(exc)}",
                              hint="check the network path to the AWS API") from None
        except (KeyError, TypeError, AttributeError):
            # botocore's JSON parser turns a non-JSON 200 into {"message": ...}.
            raise SecretError(f"cannot read {ref} (for {name}): the endpoint's answer is not "
                              "a valid AWS response", hint="check the network path to the AWS "
                              "API and AWS_ENDPOINT_URL(_SSM/_SECRETSMANAGER)") from None
        log.debug("%s read from %s", name, ref)
    return values


@dataclass
class SecretGuard:
    """A run's secrets as the pipeline and the runner see them (no values but the redactor's).

    Filled before the fetch; empty (inactive) when no secret is configured.
    ``env`` holds references and paths for ansible's environment, never values.
    """

    redactor: Redactor = field(default_factory=Redactor)
    env: dict[str, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    scratch: Path | None = None

    @property
    def active(self) -> bool:
        return bool(self.names)

    def cleanup(self) -> None:
        """Remove the scratch dir (ansible's temp files, partial events); idempotent."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


def parse_settings(secret_vars: Mapping[str, Any],
                   vault_password: str | None) -> tuple[dict[str, SecretRef], SecretRef | None]:
    """Validate ``secret_vars`` and ``vault_password``; SecretError names the bad entry."""
    from pullboot.roles import check_var_name

    refs = {check_var_name(name, origin="secret_vars"): SecretRef.parse(
        text, where=f"secret_vars.{name}") for name, text in secret_vars.items()}
    vault = SecretRef.parse(vault_password, where="vault_password") if vault_password else None
    return refs, vault


def prepare(guard: SecretGuard, *, refs: Mapping[str, SecretRef], vault: SecretRef | None,
            region: str | None, private_dir: Path) -> None:
    """Fetch the values into ``guard.redactor`` and set up ansible's environment.

    Raises SecretError when a secret cannot be read: the play would fail on it
    anyway, and it is better to say so before anything is fetched or run.
    """
    wanted = dict(refs)
    if vault is not None:
        wanted["(vault password)"] = vault
    if not wanted:
        return
    values = fetch(wanted, region=region)
    for name, value in values.items():
        if len(value) < 4:
            log.warning("secret %s is shorter than 4 characters: it cannot be redacted "
                        "from output", name)
        guard.redactor.add(value)
    guard.names = sorted(wanted)
    env: dict[str, str] = {ENV_REGION: region or os.environ.get("AWS_DEFAULT_REGION", "")}
    if refs:
        env[ENV_VARS] = json.dumps({name: str(ref) for name, ref in refs.items()})
        env["ANSIBLE_VARS_PLUGINS"] = os.pathsep.join([str(PLUGIN_DIR),
                                                       DEFAULT_VARS_PLUGIN_PATH])
    if vault is not None:
        env[ENV_VAULT] = str(vault)
        env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(_vault_launcher(private_dir))
    guard.scratch = _scratch_dir()
    if guard.scratch is not None:
        # Module arguments and rendered content pass through these dirs, and
        # async tasks keep their whole result (stdout included) in job files.
        env["ANSIBLE_LOCAL_TEMP"] = str(guard.scratch / "local")
        env["ANSIBLE_REMOTE_TEMP"] = str(guard.scratch / "remote")
        env["ANSIBLE_ASYNC_DIR"] = str(guard.scratch / "async")
    else:
        env["ANSIBLE_PIPELINING"] = "True"  # at least modules go through stdin, not files
    env.update(NO_DISK_ANSIBLE_ENV)
    guard.env = env
    no_core_dumps()
    log.info("secrets for the play: %s (values fetched in memory, redacted from output)",
             ", ".join(f"{n} <- {wanted[n]}" for n in sorted(wanted)))


def no_core_dumps() -> None:
    """No core dump of this process or its children (ansible-playbook, its forks).

    A dump of a killed ansible-playbook holds every secret in its memory. The
    core size limit 0 is inherited by every child (systemd-coredump honours it
    too); the non-dumpable flag also keeps other users' debuggers and
    ``/proc/PID/mem`` away from this process (exec resets it in children).
    """
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        log.warning("could not turn off core dumps: %s", exc)
    if sys.platform == "linux":
        import ctypes

        pr_set_dumpable = 4
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
            log.warning("could not mark the process non-dumpable (errno %d)", ctypes.get_errno())


def _vault_launcher(private_dir: Path) -> Path:
    """An executable that prints the vault password; the file itself holds no secret."""
    path = private_dir / "bin" / "pullboot-vault-password"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, f"#!{sys.executable}\nfrom pullboot.secrets import vault_password_main\n"
                 "raise SystemExit(vault_password_main())\n".encode(), mode=0o700)
    return path


def vault_password_main() -> int:
    """Entry of the vault password launcher: print the password named by the env."""
    try:
        ref = SecretRef.parse(os.environ.get(ENV_VAULT, ""), where=ENV_VAULT)
        value = fetch({"vault_password": ref},
                      region=os.environ.get(ENV_REGION) or None)["vault_password"]
    except PullbootError as exc:
        sys.stderr.write(f"pullboot vault password: {exc.message}\n")
        return 1
    sys.stdout.write(value + "\n")
    return 0


def _scratch_dir() -> Path | None:
    parent = _tmpfs_parent()
    if parent is not None:
        clear_stale_scratch(Path(parent))
        path = Path(tempfile.mkdtemp(prefix=f"pullboot-{os.getpid()}-", dir=parent))
        for sub in ("local", "remote", "async", "job_events"):
            (path / sub).mkdir(mode=0o700)
        return path
    log.warning("no writable tmpfs (%s): ansible's temporary files may hold secrets briefly "
                "on disk under the state dir", ", ".join(TMPFS_CANDIDATES))
    return None


def _tmpfs_parent() -> str | None:
    """The first writable memory-backed dir of TMPFS_CANDIDATES, or None."""
    mounts = _tmpfs_mounts()
    for candidate in TMPFS_CANDIDATES:
        if candidate in mounts and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None


@contextmanager
def private_tempdir(prefix: str) -> Iterator[Path]:
    """A private (0700) temporary dir for secret material, on tmpfs when there is one.

    On tmpfs a file (a deploy key for ssh) never reaches a disk, not even when
    pullboot is killed before it can remove it; without one it falls back to
    the usual temp dir.
    """
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-",
                                     dir=_tmpfs_parent()) as path:
        yield Path(path)


def clear_stale_scratch(parent: Path) -> None:
    """Remove the scratch dirs of pullboot processes that are gone (killed: SIGKILL, OOM).

    Their files (play output, module arguments, a deploy key) would otherwise stay
    in memory, and possibly swap, until the next reboot. Only dirs named
    ``pullboot-[git-]PID-*`` that are real dirs owned by this user, whose PID is
    no longer alive, are removed.
    """
    for entry in parent.glob("pullboot-*"):
        match = _STALE_RE.fullmatch(entry.name)
        if match is None or _alive(int(match[1])):
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s, left by a pullboot run that was killed", entry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _tmpfs_mounts() -> set[str]:
    try:
        lines = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return set()
    return {parts[1] for parts in (line.split() for line in lines)
            if len(parts) > 2 and parts[2] == "tmpfs"}


def scrub_tree(root: Path, redact: Redactor) -> list[Path]:
    """Redact known secret values in every regular file under ``root``; returns those changed."""
    changed: list[Path] = []
    if not redact or not root.is_dir():
        return changed
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8", "surrogateescape")
            clean = redact(text)
            if clean != text:
                path.write_bytes(clean.encode("utf-8", "surrogateescape"))
                changed.append(path)
        except OSError as exc:
            log.warning("could not scrub %s: %s", path, exc)
    return changed
