"""Role resolution and the launch-parameter layers that come from the instance.

Roles come from the first place that names them (``--role``, env, user-data,
the role tag via IMDS or the EC2 API, the config file). Role names are
checked against a strict pattern *before* anything is fetched or run, since
they become file names (``playbooks/<role>.yml``) and S3 keys.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pullboot.config import OPTIONS, Layer, Settings, coerce, did_you_mean, flatten
from pullboot.errors import ConfigError, RoleError
from pullboot.identity import Identity
from pullboot.trust import OriginKind, Policy

log = logging.getLogger(__name__)

ROLE_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_ROLE_RE: Final = re.compile(ROLE_PATTERN)
VAR_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_VAR_RE: Final = re.compile(VAR_PATTERN)
TAG_PREFIX: Final = "pullboot:"
VAR_TAG_PREFIX: Final = "pullboot:var:"
# Tags pullboot itself writes (signals.tags): outputs, never settings.
OUTPUT_TAGS: Final = frozenset({"pullboot:status", "pullboot:revision", "pullboot:run-id"})


@dataclass(frozen=True)
class RoleChoice:
    """One role to run and where it was named."""

    name: str
    origin: str


def check_role_name(value: str, *, origin: str) -> str:
    """Return ``value`` if it is a safe role name, else raise RoleError naming it."""
    if _ROLE_RE.fullmatch(value) and ".." not in value:
        return value
    shown = repr(value) if len(value) <= 80 else repr(value[:80]) + f"... ({len(value)} chars)"
    what = "is blank" if not value.strip() else "is not a valid role name"
    raise RoleError(
        f"role {shown} from {origin} {what}",
        hint=f"role names must match {ROLE_PATTERN} (lower-case letters, digits, '_', '.', "
        "'-'; no '..'); list several roles comma-separated",
    )


def check_var_name(name: str, *, origin: str) -> str:
    """Return ``name`` if it can be an Ansible variable name, else raise ConfigError."""
    if _VAR_RE.fullmatch(name):
        return name
    raise ConfigError(f"launch parameter name {name[:80]!r} from {origin} is not a valid "
                      "variable name", hint=f"variable names must match {VAR_PATTERN}")


def resolve_roles(settings: Settings, *, looked: Iterable[str]) -> tuple[RoleChoice, ...]:
    """The roles to run, in order, each with its origin; RoleError if none or any bad."""
    names: list[str] = settings.get("roles")
    origin = settings.origin("roles")
    if not names:
        places = "\n".join(f"  - {line}" for line in looked)
        raise RoleError(
            "no role for this instance; looked in:\n" + places,
            hint="pass --role NAME, set the instance tag, or put 'pullboot: {role: NAME}' "
            "in user-data or the config file",
        )
    choices = tuple(RoleChoice(check_role_name(n, origin=origin), origin) for n in names)
    if len({c.name for c in choices}) != len(choices):
        raise RoleError(f"roles {names} from {origin} name a role twice",
                        hint="list each role once")
    for choice in choices:
        log.info("role %s (from %s)", choice.name, choice.origin)
    return choices


def tag_layer(identity: Identity, *, role_tag: str, policy: Policy | None = None) -> Layer:
    """Settings and vars named by instance tags, with ``imds-tag:KEY`` style origins.

    ``<role_tag>`` names the roles, ``pullboot:var:<name>`` a launch parameter and
    ``pullboot:<key>`` any other setting. Which of them tags may really set is
    the trust policy's decision (:func:`pullboot.config.resolve`), not this
    function's: a tag the policy refuses is an error there, never ignored.
    Given the host's ``policy``, the refusal comes first, before the value is
    even parsed (an attacker's tag gets "not allowed", not "fix the value").
    """
    if not identity.tags or identity.tags_from is None:
        return Layer("tags", {})
    prefix = "imds-tag" if identity.tags_from == "imds" else "ec2-api-tag"
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    tag_vars: dict[str, str] = {}
    for key, value in identity.tags.items():
        origin = f"{prefix}:{key}"
        if key == role_tag:
            setting = "roles"
        elif key.startswith(VAR_TAG_PREFIX):
            name = check_var_name(key[len(VAR_TAG_PREFIX):], origin=f"tag {key!r}")
            if policy is not None:
                policy.check_var(OriginKind.TAG, name, origin)
            tag_vars[name] = value
            origins[f"vars.{name}"] = origin
            continue
        elif key.startswith(TAG_PREFIX) and key not in OUTPUT_TAGS:
            named = _tag_setting(key)
            if named is None:
                continue
            setting = named
        else:
            continue
        if policy is not None:
            policy.check_setting(OriginKind.TAG, setting, origin)
        values[setting] = coerce(setting, value, where=f"tag {key!r}")
        origins[setting] = origin
    if tag_vars:
        values["vars"] = tag_vars
    return Layer(prefix, values, origins)


def _tag_setting(key: str) -> str | None:
    """The setting a ``pullboot:<key>`` tag names, or None (with a warning) if none."""
    name = key[len(TAG_PREFIX):]
    if name in OPTIONS and name not in ("roles", "vars"):
        return name
    hint = did_you_mean(name) if name else ""
    log.warning("ignoring instance tag %r: it names no pullboot setting%s", key[:80],
                f" ({hint})" if hint.startswith("did you mean") else "")
    return None


def user_data_layer(section: Mapping[str, Any] | None) -> Layer:
    """The ``pullboot:`` section of user-data as a settings layer."""
    if not section:
        return Layer("user-data", {})
    values = flatten(section, where="user-data 'pullboot:' section")
    for name in values.get("vars", {}):
        check_var_name(name, origin="user-data vars")
    return Layer("user-data", values)
