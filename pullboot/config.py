"""Settings: one schema, several layers, every value with its origin.

A setting is resolved from layers in precedence order
``cli > env > user-data > tags > config file > default``; the first layer that
holds a key wins and the resolved value remembers that layer's origin.
``vars`` is the exception: launch parameters are merged name by name, each
keeping its own origin.

Config files and user-data are nested YAML (``imds: {enabled: false}``); the
schema and :meth:`Settings.get` use dotted keys (``imds.enabled``).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from pullboot import trust, values
from pullboot.bounded import load_yaml
from pullboot.errors import ConfigError
from pullboot.trust import OriginKind, Policy, Tier

log = logging.getLogger(__name__)

DEFAULT_CONFIG: Final = Path("/etc/pullboot/pullboot.yml")
DEFAULT_STATE_DIR: Final = "/var/lib/pullboot"
ENV_PREFIX: Final = "PULLBOOT_"


@dataclass(frozen=True)
class Option:
    """One setting: its dotted key, type name, default, help, and who may set it.

    ``tier`` is the trust policy's default for the setting (:mod:`pullboot.trust`):
    TAG (tags may set it), LAUNCH (user-data may), HOST (only cli, env and the
    config file) or EARLY (host-only, read before user-data and tags exist).
    """

    key: str
    kind: str  # str | opt-str | bool | int | float | list | dict | choice
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    tier: Tier = Tier.HOST


TAG, LAUNCH, EARLY = Tier.TAG, Tier.LAUNCH, Tier.EARLY
_BASE_SCHEMA: Final[tuple[Option, ...]] = (
    Option("source", "opt-str", None, "where playbooks come from: dir, git or s3 URL",
           tier=LAUNCH),
    Option("ref", "opt-str", None, "git branch, tag or sha (default: the remote's HEAD)",
           tier=LAUNCH),
    Option("playbooks", "list", [], "playbooks to run, relative to the tree (like "
           "ansible-pull's playbook.yml arguments); default: by role, else the fallbacks",
           tier=LAUNCH),
    Option("roles", "list", [], "roles to run, in order (role: web, or roles: [base, web])",
           tier=TAG),
    Option("role_tag", "str", "pullboot:role", "instance tag that names the role(s)",
           tier=EARLY),
    Option("vars", "dict", {}, "extra vars (launch parameters) for the play", tier=TAG),
    Option("state_dir", "str", DEFAULT_STATE_DIR, "runs, releases, caches and the lock",
           tier=EARLY),
    Option("keep_runs", "int", 30, "run reports kept under state_dir/runs"),
    Option("keep_releases", "int", 3, "fetched releases kept under state_dir/releases"),
    Option("on_source_failure", "choice", "last-good", "source down: run the last good release "
           "or fail", ("last-good", "fail"), tier=LAUNCH),
    Option("only_if_changed", "bool", False, "skip the run when nothing changed since the "
           "last successful run", tier=LAUNCH),
    Option("imds.enabled", "bool", True, "read identity, tags and user-data from IMDS", tier=EARLY),
    Option("imds.tags", "bool", True, "read instance tags from IMDS (needs metadata tags on)",
           tier=EARLY),
    Option("imds.allow_v1", "bool", False, "fall back to IMDSv1 when no token can be had",
           tier=EARLY),
    Option("imds.timeout", "float", 2.0, "seconds per IMDS request", tier=EARLY),
    Option("imds.budget", "float", 120.0, "total seconds to wait for IMDS at boot", tier=EARLY),
    Option("ec2_tags", "bool", True, "read tags with the EC2 API when IMDS has none", tier=EARLY),
    Option("run.check", "bool", False, "ansible check mode", tier=LAUNCH),
    Option("run.diff", "bool", False, "ansible diff mode", tier=LAUNCH),
    Option("run.tags", "list", [], "only run tasks with these tags", tier=LAUNCH),
    Option("run.skip_tags", "list", [], "skip tasks with these tags", tier=LAUNCH),
    Option("run.limit", "opt-str", None, "limit the play to these hosts (default: this host, "
           "as ansible-pull: localhost, its host names, 127.0.0.1)", tier=LAUNCH),
    Option("run.inventory", "list", [], "inventories in the tree (paths relative to it, or a "
           "host list like 'localhost,'); default: the tree's ansible.cfg inventory, else "
           "inventory/, else hosts[.ini|.yml]", tier=LAUNCH),
    Option("run.verbosity", "int", 0, "ansible verbosity (0-4)", tier=LAUNCH),
    Option("run.timeout", "int", 0, "job timeout in seconds (0: none)", tier=LAUNCH),
    Option("run.keep_artifacts", "int", 5, "ansible-runner artifact dirs kept"),
    # -- sources (integrity, auth, retries) --
    Option("fetch.retry_budget", "float", 60.0, "seconds to keep retrying an unreachable "
           "source before falling back", tier=LAUNCH),
    Option("git.full", "bool", False, "full clone instead of a shallow one", tier=LAUNCH),
    Option("git.submodules", "bool", True, "check submodules out too (as ansible-pull does)",
           tier=LAUNCH),
    Option("git.ssh_key", "opt-str", None, "deploy key: a path, ssm:NAME or secretsmanager:ID"),
    Option("git.known_hosts", "opt-str", None, "known_hosts file for strict host-key checks"),
    Option("git.accept_new_host_key", "bool", False, "trust an unknown SSH host key on first "
           "use (explicit opt-in)"),
    Option("git.token", "opt-str", None, "HTTPS token: ssm:NAME, secretsmanager:ID or env:VAR"),
    Option("git.token_user", "str", "x-access-token", "user name sent with the HTTPS token"),
    Option("git.credential_hosts", "list", [], "servers that may receive git.token / "
           "git.ssh_key when the source comes from user-data (default: only a source the "
           "host set itself)"),
    Option("git.verify_commit", "bool", False, "refuse commits without an allowed signature"),
    Option("git.allowed_signers", "list", [], "GPG fingerprints or SSH public keys allowed to "
           "sign"),
    Option("git.gpg_keys", "list", [], "armored GPG public key files to verify with"),
    Option("s3.version_id", "opt-str", None, "pin the bundle to this S3 version", tier=LAUNCH),
    Option("s3.checksum", "choice", "auto", "verify sha256: auto (when published), required, "
           "off", ("auto", "required", "off")),
    Option("s3.signature_keys", "list", [], "Ed25519 public keys (PEM files or base64) for "
           "<key>.sig"),
    Option("s3.require_signature", "bool", False, "refuse bundles without a valid signature"),
    Option("s3.max_bytes", "int", 1 << 30, "largest extracted bundle size"),
    Option("s3.max_members", "int", 100_000, "most members in a bundle"),
    Option("galaxy.enabled", "bool", True, "install the tree's requirements.yml into the "
           "release", tier=LAUNCH),
    # -- boot integration --
    Option("lock.wait", "float", 0.0, "seconds to wait for another run's lock (0: exit 75)",
           tier=EARLY),
    Option("splay", "float", 0.0, "random delay in seconds before fetching", tier=LAUNCH),
    Option("splay_stable", "bool", False, "derive the splay from the instance id", tier=LAUNCH),
    Option("splay_first_boot", "bool", False, "splay the first boot run too", tier=LAUNCH),
    Option("status_file", "str", "/run/pullboot/status.json", "live phase/status of the run",
           tier=EARLY),
    Option("signals.lifecycle_hook", "opt-str", None, "Auto Scaling lifecycle hook to complete",
           tier=LAUNCH),
    Option("signals.lifecycle_group", "opt-str", None, "Auto Scaling group (default: the "
           "aws:autoscaling:groupName tag)", tier=LAUNCH),
    Option("signals.on_failure", "choice", "ABANDON", "lifecycle result for a failed run",
           ("ABANDON", "CONTINUE"), tier=LAUNCH),
    Option("signals.heartbeat_interval", "float", 300.0, "seconds between lifecycle "
           "heartbeats during a run", tier=LAUNCH),
    Option("signals.cloudformation", "bool", False, "send cfn SignalResource", tier=LAUNCH),
    Option("signals.cfn_stack", "opt-str", None, "stack (default: aws:cloudformation:stack-name "
           "tag)", tier=LAUNCH),
    Option("signals.cfn_resource", "opt-str", None, "logical id (default: "
           "aws:cloudformation:logical-id tag)", tier=LAUNCH),
    Option("signals.tags", "bool", False, "write pullboot:status/revision/run-id tags",
           tier=LAUNCH),
    Option("signals.budget", "float", 60.0, "seconds to keep retrying a signal", tier=LAUNCH),
    Option("signals.strict", "bool", False, "a failed signal fails the run", tier=LAUNCH),
    Option("results.s3", "opt-str", None, "ship reports to s3://bucket/prefix (templated)",
           tier=LAUNCH),
    Option("results.timeout", "float", 20.0, "most seconds shipping may add to a run", tier=LAUNCH),
    Option("secret_vars", "dict", {}, "vars fetched at run time: name -> ssm:NAME or "
           "secretsmanager:ID"),
    Option("vault_password", "opt-str", None, "ansible-vault password: ssm:NAME or "
           "secretsmanager:ID"),
    Option("vault_password_file", "opt-str", None, "a local ansible-vault password file on "
           "the host (ansible reads it; an executable one is run)"),
    Option("vault_ids", "list", [], "ansible --vault-id values: [label@]FILE on the host"),
)
SCHEMA: Final[tuple[Option, ...]] = (*_BASE_SCHEMA,
    # -- the trust policy (pullboot.trust): only the host may set it --
    Option("trust.tags", "list", [], "more settings instance tags may set (beyond roles and "
           "vars): tag pullboot:<key>", tier=EARLY),
    Option("trust.user_data", "list", [], "more settings user-data may set (beyond the "
           "launch settings)", tier=EARLY),
    Option("trust.host_only", "list", [], "settings neither tags nor user-data may set, "
           "whatever their default", tier=EARLY),
    Option("trust.tag_vars", "list", [], "reserved var names (ansible_*, magic vars) tags "
           "may set", tier=EARLY),
    Option("trust.user_data_vars", "list", [], "reserved var names user-data may set",
           tier=EARLY),
    Option("trust.protected_vars", "list", [], "var names neither tags nor user-data may set "
           "(secret_vars' names always are)", tier=EARLY),
)
OPTIONS: Final[dict[str, Option]] = {o.key: o for o in SCHEMA}
TIERS: Final[dict[str, Tier]] = {o.key: o.tier for o in SCHEMA}
# Short names accepted in config, user-data and tags.
ALIASES: Final[dict[str, str]] = {"role": "roles"}


@dataclass(frozen=True)
class Resolved:
    """A value and where it came from (cli, env:NAME, user-data, imds-tag:KEY, config, ...)."""

    value: Any
    origin: str
    kind: OriginKind = OriginKind.DEFAULT

    @property
    def from_host(self) -> bool:
        """True when the host (cli, env, config, default) set it: not tags or user-data."""
        return self.kind in trust.HOST_KINDS


@dataclass(frozen=True)
class Layer:
    """Values from one place; ``origins`` overrides ``origin`` per key (tags, env names)."""

    origin: str
    values: Mapping[str, Any]
    origins: Mapping[str, str] = field(default_factory=dict)

    def origin_of(self, key: str) -> str:
        return self.origins.get(key, self.origin)

    @property
    def kind(self) -> OriginKind:
        """Who owns this layer; an unknown origin counts as the least trusted (a tag)."""
        return _LAYER_KINDS.get(self.origin, OriginKind.TAG)


_LAYER_KINDS: Final = {"cli": OriginKind.CLI, "env": OriginKind.ENV,
                       "config": OriginKind.CONFIG, "user-data": OriginKind.USER_DATA}


@dataclass(frozen=True)
class Settings:
    """Resolved settings: ``get(key)`` gives the value, ``origin(key)`` where it came from."""

    resolved: Mapping[str, Resolved]
    vars: Mapping[str, Resolved]
    policy: Policy = field(default_factory=lambda: policy_of({}))

    def get(self, key: str) -> Any:
        return self.resolved[key].value

    def origin(self, key: str) -> str:
        return self.resolved[key].origin

    def var_values(self) -> dict[str, Any]:
        return {name: r.value for name, r in self.vars.items()}


_SECTIONS: Final = frozenset(k.split(".", 1)[0] for k in OPTIONS if "." in k)


def policy_of(host: Mapping[str, Any]) -> Policy:
    """The trust policy from the host's ``trust.*`` and ``secret_vars`` (missing: defaults)."""
    def get(key: str) -> Any:
        return host.get(key, OPTIONS[key].default)

    return Policy.build(TIERS, tags=get("trust.tags"), user_data=get("trust.user_data"),
                        host_only=get("trust.host_only"), tag_vars=get("trust.tag_vars"),
                        protected_vars=[*get("trust.protected_vars"), *get("secret_vars")],
                        user_data_vars=get("trust.user_data_vars"))


def resolve(layers: Iterable[Layer]) -> Settings:
    """Merge layers (highest precedence first) over the schema defaults.

    Every value is first checked against the trust policy, which itself comes
    only from host layers (cli, env, config): a tag or user-data value that
    the policy refuses raises TrustError, naming the key, its origin and the
    config line that would allow it.
    """
    layers = list(layers)
    policy = policy_of({key: value for lay in reversed(layers) if lay.kind in trust.HOST_KINDS
                        for key, value in lay.values.items()
                        if key.startswith("trust.") or key == "secret_vars"})
    for lay in layers:
        _check_layer(lay, policy)
    resolved: dict[str, Resolved] = {}
    for opt in SCHEMA:
        if opt.key == "vars":
            continue
        hit = next((lay for lay in layers if opt.key in lay.values), None)
        if hit is None:
            resolved[opt.key] = Resolved(opt.default, "default")
        else:
            resolved[opt.key] = Resolved(hit.values[opt.key], hit.origin_of(opt.key), hit.kind)
    merged: dict[str, Resolved] = {}
    for lay in reversed(layers):
        for name, value in (lay.values.get("vars") or {}).items():
            merged[name] = Resolved(value, lay.origin_of(f"vars.{name}"), lay.kind)
    resolved["vars"] = Resolved({n: r.value for n, r in merged.items()}, "merged")
    return Settings(resolved=resolved, vars=merged, policy=policy)


def _check_layer(layer: Layer, policy: Policy) -> None:
    kind = layer.kind
    for key in layer.values:
        policy.check_setting(kind, key, layer.origin_of(key))
    for name, value in (layer.values.get("vars") or {}).items():
        origin = layer.origin_of(f"vars.{name}")
        policy.check_var(kind, name, origin)
        if kind not in trust.HOST_KINDS:
            try:
                values.check_data(value, f"launch parameter {name!r} from {origin}")
            except ValueError as exc:
                raise ConfigError(str(exc), hint="launch parameters from tags and user-data "
                                  "are plain data: mappings, lists, strings, numbers, booleans "
                                  "and null") from None


def flatten(doc: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Turn a nested mapping into validated dotted keys; unknown keys are errors."""
    flat: dict[str, Any] = {}
    for raw_key, value in doc.items():
        key = ALIASES.get(str(raw_key), str(raw_key))
        if key in _SECTIONS and isinstance(value, Mapping):
            for sub, subval in value.items():
                flat[f"{key}.{sub}"] = subval
        else:
            flat[key] = value
    return {key: coerce(key, value, where=where) for key, value in flat.items()}


def coerce(key: str, value: Any, *, where: str) -> Any:
    """Check ``value`` against the schema type of ``key``; strings are parsed (env, tags)."""
    opt = OPTIONS.get(key)
    if opt is None:
        raise ConfigError(f"unknown setting {key!r} in {where}", hint=did_you_mean(key))
    try:
        coerced = _COERCE[opt.kind](opt, value)
        check = values.VALIDATORS.get(key)
        if check is not None and coerced is not None:
            check(coerced)
        return coerced
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"setting {key!r} in {where}: {exc}",
            hint=_HINTS.get(key) or f"{key} takes {_describe(opt)}, e.g. {key}: {_example(opt)}",
        ) from None


_HINTS: Final = {
    "ref": "use a branch, tag or commit sha, e.g. ref: main (or v1.2.0, or a full sha)",
    "source": "use a directory, file:///path, git+https://host/repo.git, git+ssh://host/repo, "
              "git://host/repo or s3://bucket/key.tar.gz",
    "run.limit": "a host pattern is a plain word, e.g. limit: localhost",
    "run.inventory": "name inventories relative to the fetched tree, e.g. inventory: [hosts.ini] "
                     "(or a host list: inventory: ['localhost,'])",
    "playbooks": "name playbooks relative to the fetched tree, e.g. playbooks: [site.yml]",
    "run.tags": "tag names are plain words, e.g. tags: [web, config]",
    "run.skip_tags": "tag names are plain words, e.g. skip_tags: [slow]",
}


def did_you_mean(key: str) -> str:
    known = sorted(set(OPTIONS) | set(ALIASES))
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"did you mean {close[0]!r}? (pullboot config lists every setting)"
    return f"remove it; known settings are: {', '.join(known)} (pullboot config explains them)"


def _as_bool(_: Option, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUTHY | _FALSY:
        return v.strip().lower() in _TRUTHY
    raise ValueError(f"expected true or false, got {v!r}")


def _as_int(_: Option, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise TypeError(f"expected a whole number, got {type(v).__name__}")
    n = int(v)
    if n < 0:
        raise ValueError(f"expected a number >= 0, got {n}")
    return n


def _as_float(_: Option, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, got {v!r}")
    if f < 0:
        raise ValueError(f"expected a number >= 0, got {f}")
    return f


def _as_str(_: Option, v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _as_opt_str(o: Option, v: Any) -> str | None:
    return None if v is None else _as_str(o, v)


def _as_list(_: Option, v: Any) -> list[str]:
    if isinstance(v, str):
        return [p.strip() for p in v.split(",")] if v.strip() else [v]
    if isinstance(v, list) and all(isinstance(i, str) for i in v):
        return list(v)
    raise TypeError(f"expected a list of strings or a comma-separated string, got {v!r:.60}")


def _as_dict(_: Option, v: Any) -> dict[str, Any]:
    if isinstance(v, Mapping) and all(isinstance(k, str) for k in v):
        return dict(v)
    raise TypeError(f"expected a mapping of names to values, got {type(v).__name__}")


def _as_choice(o: Option, v: Any) -> str:
    if v not in o.choices:
        raise ValueError(f"expected one of {', '.join(o.choices)}, got {v!r}")
    return str(v)


_TRUTHY: Final = frozenset({"true", "yes", "on", "1"})
_FALSY: Final = frozenset({"false", "no", "off", "0"})
_COERCE: Final[dict[str, Callable[[Option, Any], Any]]] = {
    "bool": _as_bool, "int": _as_int, "float": _as_float, "str": _as_str,
    "opt-str": _as_opt_str, "list": _as_list, "dict": _as_dict, "choice": _as_choice,
}


def _describe(opt: Option) -> str:
    return {
        "bool": "true or false", "int": "a whole number", "float": "a number",
        "str": "a string", "opt-str": "a string", "list": "a list of strings",
        "dict": "a mapping", "choice": "one of " + "|".join(opt.choices),
    }[opt.kind]


def _example(opt: Option) -> str:
    if opt.kind == "choice":
        return opt.choices[0]
    return {"bool": "true", "int": "3", "float": "2.5", "list": "[a, b]",
            "dict": "{env: prod}"}.get(opt.kind, "value")


def load_file(path: Path, *, required: bool) -> Layer:
    """Read and validate a YAML config file; a missing optional file is an empty layer."""
    try:
        text = _read_config_text(path)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist",
                              hint="create it, or drop --config / PULLBOOT_CONFIG") from None
        log.debug("no config file at %s; using defaults", path)
        return Layer("config", {})
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}",
                          hint="check the path and its permissions") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})",
                          hint="save the file as UTF-8") from None
    try:
        doc = load_yaml(text, what=f"config file {path}", error=ConfigError)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}",
                          hint="fix the YAML syntax (yamllint helps)") from None
    if doc is None:
        return Layer("config", {})
    if not isinstance(doc, Mapping):
        raise ConfigError(f"config file {path} must be a mapping of settings, "
                          f"not {type(doc).__name__}", hint="see the README's config reference")
    log.debug("loaded config file %s", path)
    return Layer("config", flatten(doc, where=f"config file {path}"))


MAX_CONFIG_BYTES: Final = 1 << 20


def _read_config_text(path: Path) -> str:
    return read_host_file(path, what="config file",
                          hint="point --config / PULLBOOT_CONFIG at a YAML file; a pullboot "
                          "config file is a few lines of YAML")


def read_host_file(path: Path, *, what: str, hint: str) -> str:
    """The text of a file named on the host: regular, at most MAX_CONFIG_BYTES, UTF-8.

    O_NONBLOCK keeps a FIFO from hanging the boot; fstat refuses anything but a
    regular file (a FIFO, /dev/zero, a directory) before a byte is read. Raises
    OSError (the file cannot be opened), UnicodeDecodeError or ConfigError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{what} {path} is not a regular file", hint=hint)
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_CONFIG_BYTES} bytes", hint=hint)
    return data.decode("utf-8")


def env_layer(environ: Mapping[str, str] | None = None) -> Layer:
    """Settings from ``PULLBOOT_<KEY>`` variables (``PULLBOOT_IMDS_ENABLED=false``)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key, opt in OPTIONS.items():
        if opt.kind == "dict":
            continue
        name = ENV_PREFIX + key.upper().replace(".", "_")
        if name in environ:
            values[key] = coerce(key, environ[name], where=f"environment variable {name}")
            origins[key] = f"env:{name}"
    if "PULLBOOT_ROLE" in environ and "roles" not in values:
        values["roles"] = coerce("roles", environ["PULLBOOT_ROLE"],
                                 where="environment variable PULLBOOT_ROLE")
        origins["roles"] = "env:PULLBOOT_ROLE"
    return Layer("env", values, origins)
