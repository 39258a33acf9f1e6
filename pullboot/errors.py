"""One exception hierarchy for every stage of the boot job.

Each stage raises its own subclass; the CLI maps ``exit_code`` to the process
exit status, so the codes below are part of the public contract (README).
Messages name the problem and the fix; ``hint`` carries the fix separately so
that reports can show it on its own line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Final

EXIT_OK: Final = 0
EXIT_PLAY_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_IDENTITY: Final = 3
EXIT_SOURCE: Final = 4
EXIT_CANCELED: Final = 5
EXIT_LOCKED: Final = 75

# What each exit code means: the CLI's --help table and the README's are generated from (and
# checked against) this, together with the classes below that carry each code.
EXIT_MEANINGS: Final[dict[int, str]] = {
    EXIT_OK: "successful, or unchanged (nothing to do)",
    EXIT_PLAY_FAILED: "the play failed (or a strict readiness signal did)",
    EXIT_USAGE: "usage, config or trust-policy error (a secret that cannot be read included)",
    EXIT_IDENTITY: "identity or role resolution error",
    EXIT_SOURCE: "source error (fetch, verification, extraction, no playbook for a role)",
    EXIT_CANCELED: "canceled (SIGTERM/SIGINT) or timed out",
    EXIT_LOCKED: "another run holds the lock",
}


class PullbootError(Exception):
    """Root of every error pullboot raises on purpose."""

    exit_code: ClassVar[int] = EXIT_USAGE
    stage: ClassVar[str] = "pullboot"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


class ConfigError(PullbootError, ValueError):
    """The config file, an option, an env var or user-data has a bad key or value."""

    stage = "config"


class SecretError(ConfigError):
    """A secret reference is malformed, or the secret it names cannot be read.

    One class (and one exit code) for every secret reference: ``secret_vars``,
    ``vault_password``, ``git.token`` and ``git.ssh_key``.
    """

    exit_code = EXIT_USAGE
    stage = "secrets"


class TrustError(ConfigError):
    """A value came from an origin the trust policy does not allow to set it."""

    stage = "trust"


class IdentityError(PullbootError):
    """The instance identity could not be read (IMDS, EC2 API)."""

    exit_code = EXIT_IDENTITY
    stage = "identity"


class RoleError(PullbootError, ValueError):
    """No valid role could be resolved, or a role name is refused."""

    exit_code = EXIT_IDENTITY
    stage = "role"


class SourceError(PullbootError):
    """The playbook source could not be fetched, verified or extracted."""

    exit_code = EXIT_SOURCE
    stage = "source"


class TransientSourceError(SourceError):
    """The source is unreachable for now (network, DNS, 5xx, timeout); retrying may help."""


class IntegrityError(SourceError):
    """Fetched content failed a checksum, signature or safety check: never run it."""


class AuthError(SourceError):
    """The source refused our credentials or host key: never retried, never silent."""


class HostKeyError(AuthError):
    """The SSH server's host key is unknown or changed (strict host-key checking)."""


class SourceNotFoundError(SourceError):
    """The source says the repository (or the ref in it) does not exist: never retried."""


class PlaybookError(SourceError):
    """The fetched tree has no playbook for a resolved role, or none of a named one."""


class InventoryError(SourceError):
    """An inventory named by -i / run.inventory is not in the fetched tree."""


class RunError(PullbootError):
    """ansible-runner could not be started or failed outside the play."""

    exit_code = EXIT_PLAY_FAILED
    stage = "run"


class PlayError(RunError):
    """ansible-playbook stopped without a failed task: a play that does not parse or load.

    A YAML error, a removed keyword, an unknown attribute, a missing role,
    collection or module, a vault file without a password. ``origin`` is
    ansible's ``file:line:col`` (relative to the release), when it gave one.
    """

    stage = "play"

    def __init__(self, message: str, *, hint: str | None = None,
                 origin: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.origin = origin


class LockError(PullbootError):
    """Another pullboot run holds the state dir's lock."""

    exit_code = EXIT_LOCKED
    stage = "lock"


class StateError(PullbootError, OSError):
    """The state dir cannot be created or written."""

    stage = "state"


class ImdsUnavailable(IdentityError):
    """IMDS did not answer within the wait budget, or refused us for good."""


class UnsafeDirError(StateError):
    """A directory pullboot writes into can be changed by others (owner or mode)."""


class Canceled(PullbootError):
    """SIGTERM/SIGINT arrived before the play started (during a wait or a fetch)."""

    exit_code = EXIT_CANCELED
    stage = "run"


class SimError(PullbootError):
    """The simulator cannot do what was asked (podman, image build, instance, servers)."""

    stage = "sim"


class PodmanError(SimError):
    """A podman command failed; carries the command, exit code and the tail of stderr."""

    STDERR_TAIL: ClassVar[int] = 2000

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        tail = stderr.strip()[-self.STDERR_TAIL:]
        super().__init__(f"`podman {' '.join(args)}` failed (exit {returncode}): {tail}",
                         hint="see podman's message above")
        self.args_ = tuple(args)
        self.returncode = returncode
        self.stderr = stderr


class ShipError(PullbootError):
    """A sink could not store the results (network, permissions, missing bucket)."""

    stage = "report"


def exit_code_table() -> list[tuple[int, str, list[str]]]:
    """(code, meaning, error classes that exit with it), for --help and the README."""
    classes: dict[int, list[str]] = {}
    stack: list[type[PullbootError]] = [PullbootError]
    while stack:
        cls = stack.pop()
        classes.setdefault(cls.exit_code, []).append(cls.__name__)
        stack.extend(cls.__subclasses__())
    return [(code, meaning, sorted(classes.get(code, [])))
            for code, meaning in EXIT_MEANINGS.items()]
