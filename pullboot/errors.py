"""One exception hierarchy for every stage of the boot job.

Each stage raises its own subclass; the CLI maps ``exit_code`` to the process
exit status, so the codes below are part of the public contract (README).
Messages name the problem and the fix; ``hint`` carries the fix separately so
that reports can show it on its own line.
"""

from __future__ import annotations

from typing import ClassVar, Final

EXIT_OK: Final = 0
EXIT_PLAY_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_IDENTITY: Final = 3
EXIT_SOURCE: Final = 4
EXIT_CANCELED: Final = 5
EXIT_LOCKED: Final = 75


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


class PlaybookError(SourceError):
    """The fetched tree has no playbook for a resolved role."""


class RunError(PullbootError):
    """ansible-runner could not be started or failed outside the play."""

    exit_code = EXIT_PLAY_FAILED
    stage = "run"


class LockError(PullbootError):
    """Another pullboot run holds the state dir's lock."""

    exit_code = EXIT_LOCKED
    stage = "lock"


class StateError(PullbootError, OSError):
    """The state dir cannot be created or written."""

    stage = "state"


class ImdsUnavailable(IdentityError):
    """IMDS did not answer within the wait budget, or refused us for good."""


class Canceled(PullbootError):
    """SIGTERM/SIGINT arrived before the play started (during a wait or a fetch)."""

    exit_code = EXIT_CANCELED
    stage = "run"
