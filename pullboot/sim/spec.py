"""What a simulated launch is made of, and how the instance sees it.

An :class:`InstanceSpec` is what ``pullboot sim boot`` was asked for: roles, source, launch
parameters, tags, user-data, identity. From it come what a launch template and an Auto
Scaling group would give a real instance:

* tags: ``Name``, ``pullboot:role`` (from ``--role``) and every ``--tag``;
* user-data: the ``--user-data`` file verbatim, or a ``#cloud-config`` document with a
  ``pullboot:`` section holding ``source``, ``ref`` and ``vars``;
* the environment of the instance's pullboot units (IMDS endpoint, AWS endpoints, dummy
  credentials, ``--env``), written as a systemd drop-in.

The instance has its own network namespace: a URL naming the host's loopback (``127.0.0.1``,
``localhost``) in the source or in ``--env`` is rewritten to
:data:`~pullboot.sim.HOST_FROM_INSTANCE`, and a local path source (a directory,
``file://``, ``git+file://``) is mounted read-only at the same path. A ``--user-data`` file
is served verbatim.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml

from pullboot.atomic import write_json_atomic
from pullboot.errors import ConfigError
from pullboot.sim import HOST_FROM_INSTANCE
from pullboot.sim.s3 import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY
from pullboot.sources.base import detect_kind
from pullboot.userdata import parse_user_data
from pullboot.userdata_template import template_vars

NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
ROLE_TAG: Final = "pullboot:role"
# slirp4netns gives every container this address; the emulated identity says the same.
INSTANCE_IP: Final = "10.0.2.100"
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_SPEC_FILE: Final = "spec.json"


@dataclass(frozen=True)
class InstanceSpec:
    """One simulated instance. ``user_data`` is the text of ``--user-data``, if given."""

    name: str
    instance_id: str
    roles: tuple[str, ...] = ()
    source: str | None = None
    ref: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    user_data: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    bundle: str | None = None
    instance_type: str = "t3.micro"
    region: str = "eu-west-1"
    ports: tuple[int, ...] = (80,)

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ConfigError(f"simulated instance name {self.name!r} is not valid",
                              hint="use 1-40 lowercase letters, digits and '-'")
        if self.user_data is not None and (self.source or self.ref or self.vars):
            raise ConfigError("--user-data is served as is: put source, ref and vars in it, "
                              "or drop --user-data and use --source/--ref/-e",
                              hint="one place for the launch settings, as in a launch template")

    # -- what the instance is given ----------------------------------------------------------

    def all_tags(self) -> dict[str, str]:
        """The instance tags: Name, pullboot:role from the roles, then ``tags``."""
        out = {"Name": f"pullboot-sim-{self.name}"}
        if self.roles:
            out[ROLE_TAG] = ",".join(self.roles)
        out.update(self.tags)
        return out

    def user_data_bytes(self) -> bytes | None:
        """User-data as served by IMDS: the given file, else a ``#cloud-config`` document."""
        if self.user_data is not None:
            return self.user_data.encode()
        section: dict[str, Any] = {}
        if self.source and not self._host_source():
            section["source"] = source_for_instance(self.source)
        if self.ref:
            section["ref"] = self.ref
        if self.vars:
            section["vars"] = dict(self.vars)
        if not section:
            return None
        body = yaml.safe_dump({"pullboot": section}, sort_keys=False, default_flow_style=False)
        return ("#cloud-config\n" + body).encode()

    def served_source(self) -> str | None:
        """The source the instance will use as the host names it (for serving and mounts)."""
        if self.source:
            return self.source
        # A templated source renders as on the instance (its IMDS fake's id, region and zone).
        variables = template_vars(instance_id=self.instance_id, region=self.region,
                                  availability_zone=f"{self.region}a", hostname=None)
        section = (parse_user_data(self.user_data.encode(), variables=variables)
                   if self.user_data else None)
        if section and isinstance(section.get("source"), str):
            return str(section["source"])
        return self.all_tags().get("pullboot:source")

    def source_kind(self) -> str | None:
        source = self.served_source()
        return detect_kind(source) if source else None

    def mounts(self) -> list[Path]:
        """Local paths the source needs inside the instance (mounted read-only, same path)."""
        source = self.served_source()
        path = local_path(source) if source else None
        return [path] if path is not None else []

    def unit_environment(self, *, imds_url: str, s3_url: str | None) -> dict[str, str]:
        """Environment of the instance's pullboot units (host URLs given, rewritten here)."""
        env = {
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": for_instance(imds_url),
            # Not AWS: botocore needs something to sign with, and must not look for more.
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
        }
        if s3_url is not None:
            env["AWS_ENDPOINT_URL"] = for_instance(s3_url)
        if self._host_source():
            # A directory on the instance is the image builder's choice, never user-data's
            # (trust policy): the unit's environment is where an image would set it.
            env["PULLBOOT_SOURCE"] = source_for_instance(str(self.source))
        env.update({k: for_instance(v) for k, v in self.env.items()})
        return env

    def _host_source(self) -> bool:
        """True for a directory source: it reaches the instance as the host's setting."""
        return bool(self.source) and detect_kind(str(self.source)) == "dir"

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # the writer refuses 0775
        write_json_atomic(directory / _SPEC_FILE, asdict(self))

    @classmethod
    def load(cls, directory: Path) -> InstanceSpec:
        data = json.loads((directory / _SPEC_FILE).read_text(encoding="utf-8"))
        data["roles"] = tuple(data.get("roles") or ())
        data["ports"] = tuple(data.get("ports") or ())
        return cls(**data)


def new_instance_id() -> str:
    """An id shaped like EC2's: ``i-`` and 17 hex digits."""
    return "i-" + secrets.token_hex(9)[:17]


def for_instance(value: str) -> str:
    """``value`` as the instance must write it: a host loopback URL names the host's address."""
    parts = urlsplit(value)
    if parts.scheme and parts.hostname in _LOOPBACK_HOSTS:
        host = f"[{parts.hostname}]" if ":" in str(parts.hostname) else str(parts.hostname)
        netloc = parts.netloc.replace(host, HOST_FROM_INSTANCE, 1)
        return urlunsplit(parts._replace(netloc=netloc))
    return value


def absolute_source(source: str) -> str:
    """``source`` with a relative local path made absolute (the servers run from ``/``)."""
    path = local_path(source)
    return str(path) if path is not None and not urlsplit(source).scheme else source


def source_for_instance(source: str) -> str:
    """The source URL in the instance: loopback rewritten, a local path made absolute."""
    path = local_path(source)
    if path is not None and not urlsplit(source).scheme:
        return str(path)  # mounted at the same path; the instance's cwd is /
    return for_instance(source)


def local_path(source: str) -> Path | None:
    """The host directory a dir or local Git source reads, or None for remote sources."""
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme in ("file", "git+file"):
        return Path(unquote(parts.path)).resolve()
    if scheme == "" and not re.match(r"^[\w.-]+@[\w.-]+:", source):
        return Path(source).expanduser().resolve()
    return None


def parse_pairs(items: list[str] | None, *, what: str) -> dict[str, str]:
    """``["k=v", ...]`` into a dict; ConfigError naming ``what`` for an item without ``=``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE", hint=f"write {what} key=value")
        out[key.strip()] = value
    return out
