"""The trust policy: which origin may set which setting and which launch parameter.

pullboot reads values from places with different owners. The command line,
the environment and the config file belong to whoever built the image (they
are root already); user-data belongs to whoever may launch the instance;
instance tags belong to whoever holds ``ec2:CreateTags`` on it, often far more
people. Each setting therefore has a :class:`Tier` that says which origins may
set it by default:

* ``TAG``: tags, user-data and the host (roles, plain launch parameters);
* ``LAUNCH``: user-data and the host (source, ref, run options, signals,
  results): a launcher decides these, a tagger does not;
* ``HOST``: only cli, env and the config file: verification, credentials,
  limits, local paths;
* ``EARLY``: host-only and read before user-data and tags are even known
  (``state_dir``, ``imds.*``...), so no policy can hand them to those origins.

The config file may widen (or narrow) what tags and user-data may set with
``trust.tags`` and ``trust.user_data`` (setting keys), and may allow reserved
variable names by name with ``trust.tag_vars`` / ``trust.user_data_vars``.
A refused value is a :class:`~pullboot.errors.TrustError` naming the key, its
origin and the config line that would allow it.

This module only decides; :mod:`pullboot.config` resolves and calls it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final

from pullboot.errors import ConfigError, TrustError


class OriginKind(StrEnum):
    """Who owns a layer of settings."""

    CLI = "cli"
    ENV = "env"
    CONFIG = "config"
    USER_DATA = "user-data"
    TAG = "tag"
    DEFAULT = "default"

    @property
    def owner(self) -> str:
        return _OWNERS[self]


_OWNERS: Final = {
    OriginKind.CLI: "whoever runs the command (root)",
    OriginKind.ENV: "the unit's or caller's environment (root)",
    OriginKind.CONFIG: "the image builder (the config file)",
    OriginKind.USER_DATA: "whoever can launch the instance (ec2:RunInstances)",
    OriginKind.TAG: "whoever can tag the instance (ec2:CreateTags)",
    OriginKind.DEFAULT: "pullboot",
}
HOST_KINDS: Final = frozenset({OriginKind.CLI, OriginKind.ENV, OriginKind.CONFIG,
                               OriginKind.DEFAULT})


class Tier(Enum):
    """The least trusted origin that may set a setting by default."""

    TAG = "tag"
    LAUNCH = "user-data"
    HOST = "host"
    EARLY = "host (read before user-data and tags)"


# Ansible's magic and connection variables: a launch parameter of one of these
# names would change how (or as whom, or where) ansible connects and runs, or
# shadow facts the play relies on. Everything starting ``ansible_`` is covered
# by the prefix; the rest are listed (ansible.constants.MAGIC_VARIABLE_MAPPING
# and the special variables of the docs; a unit test checks ansible's list).
RESERVED_VAR_PREFIXES: Final = ("ansible_",)
RESERVED_VAR_NAMES: Final = frozenset({
    "pullboot", "hostvars", "groups", "group_names", "inventory_hostname",
    "inventory_hostname_short", "inventory_dir", "inventory_file", "omit", "play_hosts",
    "playbook_dir", "role_name", "role_names", "role_path", "vars",
    # Template globals (Jinja's and ansible's): a var of one of these names shadows the
    # function, so every lookup() or range() in the play would break.
    "lookup", "query", "q", "now", "undef", "finalize", "range", "dict", "lipsum", "cycler",
    "joiner", "namespace",
})
_VAR_ORIGINS: Final = {OriginKind.TAG: "trust.tag_vars", OriginKind.USER_DATA:
                       "trust.user_data_vars"}
_SETTING_ORIGINS: Final = {OriginKind.TAG: "trust.tags", OriginKind.USER_DATA:
                           "trust.user_data"}


def is_reserved_var(name: str) -> bool:
    """True for names a launch parameter from tags or user-data may not take by default."""
    return name in RESERVED_VAR_NAMES or name.startswith(RESERVED_VAR_PREFIXES)


@dataclass(frozen=True)
class Policy:
    """What tags and user-data may set; built from the host's ``trust.*`` settings.

    ``extra_tags`` / ``extra_user_data`` are the config's additions to the tiers'
    defaults (``trust.tags``, ``trust.user_data``), ``host_only`` its removals
    (``trust.host_only``); ``tags`` and ``user_data`` are the effective sets.
    Whatever tags may set, user-data may set too (a launcher outranks a tagger).
    """

    tiers: dict[str, Tier]
    tags: frozenset[str]
    user_data: frozenset[str]
    extra_tags: frozenset[str] = frozenset()
    extra_user_data: frozenset[str] = frozenset()
    host_only: frozenset[str] = frozenset()
    tag_vars: frozenset[str] = frozenset()
    user_data_vars: frozenset[str] = frozenset()
    # Var names the host fixes: secret_vars' names and trust.protected_vars.
    protected_vars: frozenset[str] = frozenset()

    @classmethod
    def build(cls, tiers: dict[str, Tier], *, tags: Iterable[str] = (),
              user_data: Iterable[str] = (), host_only: Iterable[str] = (),
              tag_vars: Iterable[str] = (), user_data_vars: Iterable[str] = (),
              protected_vars: Iterable[str] = ()) -> Policy:
        """The effective policy from the config's lists; a bad key is a ConfigError."""
        extra_tags, extra_ud, locked = frozenset(tags), frozenset(user_data), frozenset(host_only)
        for option, keys in (("trust.tags", extra_tags), ("trust.user_data", extra_ud),
                             ("trust.host_only", locked)):
            _check_keys(option, keys, tiers)
        for option, names in (("trust.tag_vars", tag_vars),
                              ("trust.user_data_vars", user_data_vars),
                              ("trust.protected_vars", protected_vars)):
            _check_var_names(option, names)
        tag_keys = (default_keys(tiers, {Tier.TAG}) | extra_tags) - locked
        ud_keys = (default_keys(tiers, {Tier.TAG, Tier.LAUNCH}) | extra_ud | tag_keys) - locked
        return cls(tiers=tiers, tags=tag_keys, user_data=ud_keys, extra_tags=extra_tags,
                   extra_user_data=extra_ud, host_only=locked, tag_vars=frozenset(tag_vars),
                   user_data_vars=frozenset(user_data_vars),
                   protected_vars=frozenset(protected_vars))

    def allowed(self, kind: OriginKind, key: str) -> bool:
        """May an origin of ``kind`` set setting ``key``?"""
        if kind in HOST_KINDS:
            return True
        if kind is OriginKind.TAG:
            return key in self.tags
        return key in self.user_data

    def check_setting(self, kind: OriginKind, key: str, origin: str) -> None:
        """Raise TrustError unless an origin of ``kind`` may set ``key``."""
        if self.allowed(kind, key):
            return
        tier = self.tiers[key]
        if tier is Tier.EARLY:
            raise TrustError(
                f"setting {key!r} from {origin} is refused: it is read before user-data and "
                "tags are known, so only the command line, the environment or the config file "
                "can set it", hint=f"set {key} in the config file (or PULLBOOT_* / a flag), "
                f"and remove it from {_where(kind)}")
        option = _SETTING_ORIGINS[kind]
        extra = self.extra_tags if kind is OriginKind.TAG else self.extra_user_data
        wanted = sorted(extra | {key})
        if key in self.host_only:
            raise TrustError(
                f"setting {key!r} from {origin} is refused: the config file's trust.host_only "
                "says only the host may set it",
                hint=f"remove {key} from {_where(kind)}, or from trust.host_only")
        raise TrustError(
            f"setting {key!r} from {origin} is refused by the trust policy: {_where(kind)} "
            f"may not set it ({tier_reason(tier)})",
            hint=f"if {kind.owner.split(' (')[0]} should decide {key}, allow it in the config "
            f"file: trust: {{{option.split('.', 1)[1]}: [{', '.join(wanted)}]}}; otherwise "
            f"remove it from {_where(kind)}")

    def check_var(self, kind: OriginKind, name: str, origin: str) -> None:
        """Raise TrustError if a launch parameter from ``kind`` takes a reserved name."""
        if kind in HOST_KINDS:
            return
        if name in self.protected_vars:
            raise TrustError(
                f"launch parameter {name!r} from {origin} is refused: the host fixes it "
                "(a secret_vars name, or listed in trust.protected_vars)",
                hint=f"remove {name} from {_where(kind)}; the host's value is the one used")
        if not is_reserved_var(name):
            return
        allowed = self.tag_vars if kind is OriginKind.TAG else self.user_data_vars
        if name in allowed:
            return
        option = _VAR_ORIGINS[kind]
        raise TrustError(
            f"launch parameter {name!r} from {origin} is refused: {name} is an Ansible "
            "connection, magic or reserved variable (it could change how or as whom the play "
            f"runs), and {_where(kind)} may not set those",
            hint=f"if it must, allow this name in the config file: trust: "
            f"{{{option.split('.', 1)[1]}: [{', '.join(sorted(allowed | {name}))}]}}; "
            f"otherwise remove it from {_where(kind)}")


def default_keys(tiers: dict[str, Tier], wanted: set[Tier]) -> frozenset[str]:
    """Setting keys whose tier is in ``wanted``."""
    return frozenset(k for k, t in tiers.items() if t in wanted)


def tier_reason(tier: Tier) -> str:
    """Why a tier is what it is, for errors and the README table."""
    return {
        Tier.TAG: "tags may set it",
        Tier.LAUNCH: "it decides which code runs, where data goes or how the run behaves; "
                     "user-data and the host may set it",
        Tier.HOST: "it decides verification, credentials, limits or local paths; only the "
                   "host may set it",
        Tier.EARLY: "it is read before user-data and tags",
    }[tier]


def _where(kind: OriginKind) -> str:
    return {OriginKind.TAG: "instance tags", OriginKind.USER_DATA: "user-data"}.get(
        kind, kind.value)


def _check_keys(option: str, keys: Iterable[str], tiers: dict[str, Tier]) -> None:
    for key in keys:
        if key not in tiers:
            raise ConfigError(f"{option} names {key!r}, which is not a setting",
                              hint="list setting keys as `pullboot config` shows them")
        if tiers[key] is Tier.EARLY:
            raise ConfigError(f"{option} names {key!r}, which is read before user-data and "
                              "tags are known: no policy can let them set it",
                              hint=f"remove {key} from {option}")


_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _check_var_names(option: str, names: Iterable[str]) -> None:
    for name in names:
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{option} names {name!r}, which is not a variable name",
                              hint="list variable names such as ansible_user")


def check_source_choice(*, kind: str, origin: str, from_host: bool, verify_git: bool,
                        verify_s3: bool) -> None:
    """Raise TrustError when a source chosen by tags or user-data escapes the host's checks.

    A launcher may choose the source (LAUNCH tier), but not in a way that sidesteps
    what the host decided: a directory source names a path on this host (host-only),
    and when the host verifies git commits or S3 signatures, a chosen source must be
    of a kind whose verification is on; switching kinds would run unverified code.
    """
    if from_host:
        return
    if kind == "dir":
        raise TrustError(
            f"source from {origin} is a directory on this host, and only the host may choose "
            "one", hint="set a directory source in the config file (or --source), or give a "
            "git or s3 source")
    verified = {"git": verify_git, "s3": verify_s3}
    if any(verified.values()) and not verified.get(kind, False):
        required = " and ".join(k for k, on in verified.items() if on)
        raise TrustError(
            f"source from {origin} is a {kind} source, but this host verifies only "
            f"{required} sources: its code would run unverified",
            hint="choose a source of a verified kind, or turn on its verification in the "
            "config file (git.verify_commit / s3.require_signature)")
