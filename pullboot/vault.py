"""Local ansible-vault password files (``vault_password_file``, ``vault_ids``).

ansible-playbook reads each file itself (``--vault-id [label@]FILE``; an
executable file is run, as ansible does): pullboot writes the password nowhere.
It only checks the files up front, so that a wrong path is a clear error before
the play rather than ansible's, and reads a plain password file (bounded) into
the run's :class:`~pullboot.events.Redactor`, so that a play that prints the
password has it redacted from events, the report and the artifacts like any
other secret.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from typing import Final

from pullboot import config
from pullboot.errors import ConfigError
from pullboot.secrets import SecretGuard

log = logging.getLogger(__name__)

LABEL_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
GUARD_NAME: Final = "(vault password file)"


def vault_ids(settings: config.Settings) -> tuple[tuple[str | None, Path], ...]:
    """The configured (label, absolute path) pairs; ConfigError names a bad one."""
    items: list[tuple[str | None, str, str]] = []
    if settings.get("vault_password_file"):
        items.append((None, settings.get("vault_password_file"), "vault_password_file"))
    for value in settings.get("vault_ids"):
        # As ansible's split_vault_id: the label ends at the first "@".
        label, sep, path = str(value).partition("@")
        if not sep:
            label, path = "", label
        elif not LABEL_RE.match(label):
            raise ConfigError(f"vault_ids: bad label in {value!r}",
                              hint="write LABEL@FILE with a label of letters, digits, _ . -")
        items.append((label or None, path, f"vault_ids entry {value!r}"))
    out = []
    for name, path, where in items:
        if path == "prompt":
            raise ConfigError(f"{where}: pullboot cannot prompt for a vault password (it runs "
                              "unattended)", hint="give a password file, or vault_password "
                              "(ssm:/secretsmanager:)")
        out.append((name, Path(os.path.abspath(path))))
    return tuple(out)


def prepare(settings: config.Settings, guard: SecretGuard) -> tuple[str, ...]:
    """Check the files and register plain ones' passwords; the ``--vault-id`` values."""
    ids = vault_ids(settings)
    for _, path in ids:
        password = _password_of(path)
        if password is not None:
            if len(password) < 4:
                log.warning("the vault password in %s is shorter than 4 characters: it cannot "
                            "be redacted from output", path)
            guard.redactor.add(password)
    if ids and GUARD_NAME not in guard.names:
        # Makes the guard active: the runner scrubs the artifacts of redacted values.
        guard.names = [*guard.names, GUARD_NAME]
    return tuple(f"{label}@{path}" if label else str(path) for label, path in ids)


def _password_of(path: Path) -> str | None:
    """The password in a plain password file, None for an executable one (ansible runs it)."""
    fix = "point vault_password_file / --vault-password-file / --vault-id at a readable file"
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"vault password file {path}: {exc.strerror}", hint=fix) from None
    if stat.S_ISREG(info.st_mode) and info.st_mode & 0o111:
        return None
    try:
        text = config.read_host_file(path, what="vault password file", hint=fix)
    except OSError as exc:
        raise ConfigError(f"vault password file {path}: {exc.strerror}", hint=fix) from None
    except UnicodeDecodeError:
        return None  # ansible reads bytes; nothing we can redact as text
    if info.st_mode & 0o077:
        log.warning("vault password file %s is readable by group or others", path)
    password = text.strip()
    if not password:
        raise ConfigError(f"vault password file {path} is empty", hint=fix)
    return password


