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
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pullboot.atomic import write_atomic
from pullboot.errors import EXIT_USAGE, ConfigError, PullbootError
from pullboot.events import Redactor

log = logging.getLogger(__name__)

ENV_VARS: Final = "PULLBOOT_SECRET_VARS"
ENV_VAULT: Final = "PULLBOOT_VAULT_PASSWORD_REF"
ENV_REGION: Final = "PULLBOOT_SECRETS_REGION"
PLUGIN_DIR: Final = Path(__file__).resolve().parent / "ansible_plugins" / "vars"
DEFAULT_VARS_PLUGIN_PATH: Final = "~/.ansible/plugins/vars:/usr/share/ansible/plugins/vars"
# Memory-backed places for ansible's temporary files, first usable one wins.
TMPFS_CANDIDATES: Final = ("/dev/shm", "/run")  # noqa: S108 - private mkdtemp inside


class SecretError(PullbootError):
    """A secret could not be fetched (missing, access denied, not a string)."""

    exit_code = EXIT_USAGE
    stage = "secrets"


@dataclass(frozen=True)
class SecretRef:
    """``ssm:NAME``, ``secretsmanager:ID`` or ``secretsmanager:ID#json-field``."""

    kind: str
    name: str
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f"#{self.field}" if self.field else "")

    @classmethod
    def parse(cls, text: Any, *, where: str) -> SecretRef:
        if not isinstance(text, str) or ":" not in text:
            raise ConfigError(f"{where}: {text!r} is not a secret reference",
                              hint="write ssm:NAME or secretsmanager:ID[#field]")
        kind, _, rest = text.partition(":")
        name, _, fld = rest.partition("#") if kind == "secretsmanager" else (rest, "", "")
        if kind not in FETCHERS or not name:
            raise ConfigError(f"{where}: {text!r} is not a secret reference",
                              hint="write ssm:NAME or secretsmanager:ID[#field]")
        return cls(kind, name, fld or None)


def _fetch_ssm(ref: SecretRef, client: Callable[[str], Any]) -> str:
    answer = client("ssm").get_parameter(Name=ref.name, WithDecryption=True)
    return str(answer["Parameter"]["Value"])


def _fetch_secretsmanager(ref: SecretRef, client: Callable[[str], Any]) -> str:
    answer = client("secretsmanager").get_secret_value(SecretId=ref.name)
    if "SecretString" not in answer:
        raise SecretError(f"{ref}: the secret is binary; only SecretString is supported")
    value = str(answer["SecretString"])
    if ref.field is None:
        return value
    try:
        item = json.loads(value)[ref.field]
    except (ValueError, KeyError, TypeError):
        raise SecretError(f"{ref}: the secret is not a JSON object with the field "
                          f"{ref.field!r}") from None
    return item if isinstance(item, str) else json.dumps(item)


# Secret stores, keyed by the reference's prefix.
FETCHERS: Final[dict[str, Callable[[SecretRef, Callable[[str], Any]], str]]] = {
    "ssm": _fetch_ssm, "secretsmanager": _fetch_secretsmanager,
}


def fetch(refs: Mapping[str, SecretRef], *, region: str | None) -> dict[str, str]:
    """Fetch every reference (name -> value) with the instance role; SecretError on failure."""
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
    """Validate ``secret_vars`` and ``vault_password``; ConfigError names the bad entry."""
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
        # Module arguments and rendered content pass through these dirs.
        env["ANSIBLE_LOCAL_TEMP"] = str(guard.scratch / "local")
        env["ANSIBLE_REMOTE_TEMP"] = str(guard.scratch / "remote")
    else:
        env["ANSIBLE_PIPELINING"] = "True"  # at least modules go through stdin, not files
    guard.env = env
    log.info("secrets for the play: %s (values fetched in memory, redacted from output)",
             ", ".join(f"{n} <- {wanted[n]}" for n in sorted(wanted)))


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
    mounts = _tmpfs_mounts()
    for candidate in TMPFS_CANDIDATES:
        if candidate in mounts and os.access(candidate, os.W_OK | os.X_OK):
            path = Path(tempfile.mkdtemp(prefix="pullboot-", dir=candidate))
            for sub in ("local", "remote", "job_events"):
                (path / sub).mkdir(mode=0o700)
            return path
    log.warning("no writable tmpfs (%s): ansible's temporary files may hold secrets briefly "
                "on disk under the state dir", ", ".join(TMPFS_CANDIDATES))
    return None


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
