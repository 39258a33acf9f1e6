"""The boot job, composed: resolve -> fetch -> select -> run -> report.

:func:`run` never raises a PullbootError: every failure becomes a report with
status ``error`` (or ``canceled``) and the documented exit code, written
whenever the state dir is writable. :func:`plan` resolves and fetches but
runs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pullboot import __version__, config, playbooks, roles, trust, values
from pullboot.atomic import write_json_atomic
from pullboot.errors import Canceled, ConfigError, PlayError, PullbootError, StateError
from pullboot.events import EventRecorder, ansible_error
from pullboot.identity import Identity, local_identity, read_ec2_api_tags, read_identity
from pullboot.imds import ImdsClient, ImdsOptions, imds_disabled, imds_endpoint
from pullboot.model import (
    EXIT_FOR_STATUS,
    Release,
    Report,
    Request,
    Resolution,
    RunResult,
    RunStatus,
    SourceInfo,
)
from pullboot.playbooks import Inventories
from pullboot.state import StateDir, new_run_id
from pullboot.trust import Policy
from pullboot.userdata import parse_user_data
from pullboot.userdata_template import template_vars

log = logging.getLogger(__name__)


def base_layers(req: Request) -> list[config.Layer]:
    """Layers knowable before IMDS, in precedence order: cli, env, config file."""
    return [_cli_layer(req), config.env_layer(req.environ),
            config.load_file(req.config_path, required=req.config_required)]


def lenient_base_settings(req: Request) -> config.Settings:
    """cli > env > config file, leaving out whichever layer is broken.

    For the lock, the status file and error reports: they must still work
    when the config is what failed (the run reports that error itself).
    """
    attempts: list[Callable[[], list[config.Layer]]] = [
        lambda: base_layers(req),
        lambda: [_cli_layer(req), config.env_layer(req.environ)],
        lambda: [_cli_layer(req)],
        lambda: [],
    ]
    for layers in attempts:
        try:
            return config.resolve(layers())
        except ConfigError:
            continue
    raise AssertionError("unreachable: no layers cannot fail")


def resolve(req: Request) -> Resolution:
    """Read identity, add user-data and tag layers, resolve roles (validated)."""
    cli, env, cfg = base_layers(req)
    base = config.resolve([cli, env, cfg])
    state = StateDir(Path(base.get("state_dir")))
    identity = _identity(base, req.environ, req.cancel)
    section = parse_user_data(identity.user_data, variables=template_vars(
        instance_id=identity.instance_id, region=identity.region,
        availability_zone=identity.availability_zone, hostname=identity.hostname))
    settings = config.resolve([cli, env, roles.user_data_layer(section),
                               roles.tag_layer(identity, role_tag=base.get("role_tag"),
                                               policy=base.policy), cfg])
    _log_origins(settings)
    _check_source_choice(settings)
    if req.on_identity is not None:
        req.on_identity(settings, identity)
    looked = _places_looked(settings, identity, section, req.config_path)
    chosen = roles.resolve_roles(settings, looked=looked) if settings.get("roles") else ()
    return Resolution(settings=settings, identity=identity, roles=chosen, state=state)


def run(req: Request) -> RunResult:
    """The boot job. Returns the report; never raises PullbootError."""
    from pullboot import fetch, vault

    started = time.monotonic()
    started_at = _now()
    run_id = new_run_id()
    ctx = _RunContext(run_id=run_id, started_at=started_at, started=started,
                      warnings=list(req.warnings))
    try:
        _phase(req, "resolve", run_id)
        res = resolve(req)
        ctx.resolution = res
        res.state.prepare()
        ctx.run_dir = res.state.run_dir(run_id)
        ctx.warnings.extend(_clock_check(res.state, started_at))
        if req.before_fetch is not None:
            req.before_fetch(res)
        # After before_fetch (it fills the guard) and before the fetch: a wrong path
        # fails the run while the last good release is still current.
        ctx.vault_ids = vault.prepare(res.settings, req.secrets)
        if res.settings.get("only_if_changed"):
            unchanged = _unchanged(res)
            if unchanged is not None:
                ctx.source = unchanged
                return _finish(ctx, req, status=RunStatus.UNCHANGED, exit_code=0)
        _check_cancel(req)
        _phase(req, "fetch", run_id)
        release = fetch.fetch_release(res, cancel=req.cancel)
        ctx.source = release.info
        ctx.warnings.extend(release.warnings)
        _check_cancel(req)
        books = _select(res, release.tree)
        ctx.playbooks = [str(p.relative_to(release.tree)) for p in books]
        ctx.inventories = _inventories(res, release.tree)
        ctx.limit = _limit(res)
        return _run_play(req, ctx, res, release, books)
    except PullbootError as exc:
        status = RunStatus.CANCELED if isinstance(exc, Canceled) else RunStatus.ERROR
        return _finish(ctx, req, status=status, exit_code=exc.exit_code, error=exc)
    except OSError as exc:
        # The host, not the input: a full or read-only state dir, a vanished file.
        err = StateError(f"{exc.strerror or exc}: {exc.filename or 'the state dir'}",
                         hint="free space in (or fix) the state dir; the last good release "
                         "is untouched")
        return _finish(ctx, req, status=RunStatus.ERROR, exit_code=err.exit_code, error=err)


def _run_play(req: Request, ctx: _RunContext, res: Resolution, release: Release,
              books: tuple[Path, ...]) -> RunResult:
    from pullboot import runner

    assert ctx.run_dir is not None
    settings = res.settings
    extravars, data_vars = _extravars(ctx, res)
    spec = runner.RunSpec(
        run_id=ctx.run_id, private_dir=res.state.runner, project_dir=release.tree,
        playbooks=books, extravars=extravars, data_vars=data_vars,
        check=settings.get("run.check"), diff=settings.get("run.diff"),
        tags=tuple(settings.get("run.tags")), skip_tags=tuple(settings.get("run.skip_tags")),
        limit=ctx.limit, limit_is_default=not settings.get("run.limit"),
        inventories=ctx.inventories.paths, vault_ids=ctx.vault_ids,
        inventory_hosts=ctx.inventories.hosts, verbosity=settings.get("run.verbosity"),
        timeout=settings.get("run.timeout"), keep_artifacts=settings.get("run.keep_artifacts"),
        envvars=req.secrets.env, guard=req.secrets,
    )
    events_path = ctx.run_dir / "events.jsonl"
    ctx.events_file = str(events_path)
    runner.scrub_all_artifacts(res.state.runner)
    _phase(req, "run", ctx.run_id)
    with EventRecorder(events_path, redact=req.secrets.redactor, on_event=req.on_event) as rec:
        ctx.recorder = rec
        outcome = runner.run(spec, event_handler=rec, cancel_callback=req.cancel.is_set)
    status = RunStatus.of_runner(outcome.status)
    if not settings.get("run.check") and not release.info.stale:
        from pullboot.fetch import change_digest

        # Recorded by _finish only if the run's *final* outcome is a success.
        ctx.success = (release.info.release or "", {
            "digest": change_digest(res, release.info.revision), "run_id": ctx.run_id,
            "revision": release.info.revision, "release": release.info.release,
            "roles": [r.name for r in res.roles], "finished_at": _now(),
        })
    error = _play_error(rec, events_path, release.tree) if status is RunStatus.FAILED else None
    return _finish(ctx, req, status=status, exit_code=EXIT_FOR_STATUS[status], error=error)


# Fixes for ansible's commonest play-level errors, by a phrase of its message.
_PLAY_HINTS: tuple[tuple[str, str], ...] = (
    ("no vault secrets", "give the vault password: --vault-password-file FILE, --vault-id "
     "or the vault_password_file setting"),
    ("was not found in", "add the role under roles/ or to requirements.yml in the source"),
    ("couldn't resolve module/action", "list its collection in requirements.yml (or "
     "collections/requirements.yml) in the source, or fix the module name"),
    ("has been removed", "ansible-core removed this: change the play as the message says"),
)


def _play_error(rec: EventRecorder, events_path: Path, tree: Path) -> PlayError | None:
    """Why a failed play failed, when no task did: ansible's own message and origin."""
    if rec.failures:
        return None  # the failed tasks say why
    found = ansible_error(rec.error_text, tree=tree)
    if found is None:
        return PlayError("ansible-playbook failed before any task failed and printed no "
                         "error", hint=f"see the verbose events in {events_path}")
    where = f" (at {found.origin})" if found.origin else ""
    hint = next((fix for phrase, fix in _PLAY_HINTS if phrase in found.message),
                f"fix the playbook{' at ' + found.origin if found.origin else ''}; "
                f"ansible's whole output is in {events_path}")
    return PlayError(f"ansible: {found.message}{where}", hint=hint, origin=found.origin)


def _unchanged(res: Resolution) -> SourceInfo | None:
    """Source info if nothing changed since the last *successful* run, else None.

    Costs one cheap remote check (ls-remote, S3 HEAD) and starts no ansible
    process. Failed, canceled and timed-out runs never record success, so they
    are retried at the next invocation even without a new revision.
    """
    from pullboot import fetch

    last = res.state.last_success()
    rid = res.state.last_good_release()
    if not last or rid is None:
        log.info("only-if-changed: no successful run recorded yet; running")
        return None
    src = fetch.make_source(res)
    try:
        revision = fetch.remote_revision(res, src)
    except PullbootError as exc:
        log.warning("only-if-changed: revision check failed (%s); running anyway", exc.message)
        return None
    if fetch.change_digest(res, revision) != last.get("digest"):
        log.info("only-if-changed: changed since run %s; running", last.get("run_id"))
        return None
    log.info("only-if-changed: revision %s, roles and vars as in run %s; nothing to do",
             revision, last.get("run_id"))
    return SourceInfo(url=src.display_url, kind=src.kind, ref=res.settings.get("ref"),
                      revision=revision, release=rid)


@dataclass(frozen=True)
class Plan:
    """What a run would do, and why, without running anything."""

    instance: dict[str, Any]
    identity_from: str
    roles: list[dict[str, str]]
    settings: dict[str, dict[str, Any]]
    vars: dict[str, str]
    source: SourceInfo
    current_release: str | None
    playbooks: list[str]
    would_run: bool
    reason: str
    # The trust policy in force: what tags and user-data may set.
    trust: dict[str, list[str]] = field(default_factory=dict)
    # The tree's inventories (beside pullboot's localhost), why, and the limit in force.
    inventory: list[str] = field(default_factory=list)
    inventory_from: str = ""
    limit: str = ""


def plan(req: Request) -> Plan:
    """Resolve and fetch (into the cache only), select playbooks; run nothing.

    Raises PullbootError like a run would fail, so the CLI shows the same error.
    """
    from pullboot import fetch, vault

    res = resolve(req)
    vault.vault_ids(res.settings)  # a bad --vault-id fails plan as it would fail the run
    res.state.prepare()
    current = res.state.current_release()
    release = fetch.fetch_release(res, switch=False)
    books = _select(res, release.tree)
    chosen = _inventories(res, release.tree)
    would_run, reason = _would_run(res, release.info)
    shown = {k: {"value": values.shown(k, r.value), "origin": r.origin}
             for k, r in res.settings.resolved.items() if k != "vars"}  # defaults included
    return Plan(
        instance=res.identity.as_dict(), identity_from=res.identity.source,
        roles=[{"name": r.name, "origin": r.origin} for r in res.roles],
        settings=shown, vars={n: r.origin for n, r in res.settings.vars.items()},
        source=release.info, current_release=current,
        playbooks=[str(p.relative_to(release.tree)) for p in books],
        would_run=would_run, reason=reason, trust=policy_summary(res.settings.policy),
        inventory=chosen.shown(release.tree),
        inventory_from=chosen.chosen_by, limit=_limit(res),
    )


def policy_summary(policy: Policy) -> dict[str, list[str]]:
    """The policy in force as lists, for plan (the config command shows it per setting)."""
    return {"tags": sorted(policy.tags), "user_data": sorted(policy.user_data),
            "host_only": sorted(policy.host_only), "tag_vars": sorted(policy.tag_vars),
            "user_data_vars": sorted(policy.user_data_vars)}


def _would_run(res: Resolution, info: SourceInfo) -> tuple[bool, str]:
    from pullboot.fetch import change_digest

    last = res.state.last_success() or {}
    if info.stale:
        return True, f"source unreachable ({info.stale_reason}); the last good release would run"
    if not last:
        return True, "no successful run recorded since the last failure (or ever)"
    if change_digest(res, info.revision) != last.get("digest"):
        what = ("a new revision" if info.revision != last.get("revision")
                else "other roles, vars or options")
        return True, f"{what} since the last successful run {last.get('run_id')}"
    if res.settings.get("only_if_changed"):
        return False, f"unchanged since the last successful run {last.get('run_id')}"
    return True, ("unchanged since the last successful run; a run converges again "
                  "(--only-if-changed would skip it)")


@dataclass
class _RunContext:
    """What is known so far, so that a report can be written from any step."""

    run_id: str
    started_at: str
    started: float
    resolution: Resolution | None = None
    run_dir: Path | None = None
    source: SourceInfo = field(default_factory=SourceInfo)
    playbooks: list[str] = field(default_factory=list)
    inventories: Inventories = field(default_factory=Inventories)
    limit: str | None = None
    events_file: str | None = None
    recorder: EventRecorder | None = None
    warnings: list[str] = field(default_factory=list)
    # (release id, record) of a play that succeeded, for _finish to commit.
    success: tuple[str, dict[str, Any]] | None = None
    # ``--vault-id`` values for ansible (paths on the host, checked before the fetch).
    vault_ids: tuple[str, ...] = ()


def _finish(ctx: _RunContext, req: Request, *, status: RunStatus, exit_code: int,
            error: PullbootError | None = None) -> RunResult:
    """The one place a run's outcome becomes final: report, finalize hook, success record."""
    _phase(req, "report", ctx.run_id)
    report = _report(ctx, status=status, exit_code=exit_code, error=error)
    if req.finalize is not None:
        report = req.finalize(report)
    path = _write_report(ctx, req, report)
    res = ctx.resolution
    if res is not None and path is not None:
        if report.status is RunStatus.SUCCESSFUL and ctx.success is not None:
            res.state.record_success(*ctx.success)
        elif report.status.failed and not res.settings.get("run.check"):
            # The next --only-if-changed must run again, even with no new revision.
            res.state.clear_success()
        res.state.prune_runs(res.settings.get("keep_runs"))
    return RunResult(report=report, report_path=path)


def _report(ctx: _RunContext, *, status: RunStatus, exit_code: int,
            error: PullbootError | None) -> Report:
    res = ctx.resolution
    rec = ctx.recorder
    return Report(
        run_id=ctx.run_id, status=status, exit_code=exit_code, started_at=ctx.started_at,
        finished_at=_now(), duration_s=round(time.monotonic() - ctx.started, 3),
        instance=res.identity.as_dict() if res else {},
        roles=[{"name": r.name, "origin": r.origin} for r in res.roles] if res else [],
        source=ctx.source, playbooks=ctx.playbooks,
        stats=rec.stats if rec else {},
        failures=[vars(f) for f in rec.failures] if rec else [],
        events_file=ctx.events_file, event_count=rec.count if rec else 0,
        vars={n: r.origin for n, r in res.settings.vars.items()} if res else {},
        error=_error_dict(error), options=_options(res, ctx.limit), pullboot_version=__version__,
        warnings=ctx.warnings + (rec.warnings if rec else []),
        sequence=res.state.sequence_of(ctx.run_dir) if res and ctx.run_dir else 0,
        settings=shown_settings(res.settings) if res else {},
    )


def shown_settings(settings: config.Settings) -> dict[str, dict[str, Any]]:
    """Every non-default setting as ``{key: {value, origin}}`` (plan and the report)."""
    return {k: {"value": values.shown(k, r.value), "origin": r.origin}
            for k, r in settings.resolved.items() if r.origin not in ("default", "merged")}


def _write_report(ctx: _RunContext, req: Request, report: Report) -> Path | None:
    run_dir = ctx.run_dir
    if run_dir is None:
        # The error came before the state dir was prepared: try to write anyway.
        try:
            state = StateDir(Path(lenient_base_settings(req).get("state_dir")))
            state.prepare()
            run_dir = state.run_dir(ctx.run_id)
        except (PullbootError, OSError) as exc:
            log.warning("no report written: %s", exc)
            return None
    path = run_dir / "report.json"
    try:
        write_json_atomic(path, report.to_dict())
    except OSError as exc:
        log.warning("could not write the report %s: %s", path, exc)
        return None
    return path


def _error_dict(error: PullbootError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    out = {"stage": error.stage, "type": type(error).__name__, "message": error.message,
           "hint": error.hint}
    if isinstance(error, PlayError):
        out["origin"] = error.origin
    return out


def _options(res: Resolution | None, limit: str | None) -> dict[str, Any]:
    if res is None:
        return {}
    keys = ("run.check", "run.diff", "run.tags", "run.skip_tags", "run.limit")
    options = {k.split(".", 1)[1]: res.settings.get(k) for k in keys}
    if limit is not None:  # the limit in force, the default included
        options["limit"] = limit
    return options


def _select(res: Resolution, tree: Path) -> tuple[Path, ...]:
    names = res.settings.get("playbooks")
    if names:
        if res.roles:
            log.info("playbooks named (%s): running them; roles %s reach the play as "
                     "pullboot.roles", res.settings.origin("playbooks"),
                     ", ".join(r.name for r in res.roles))
        return playbooks.named(tree, names)
    if res.roles:
        return playbooks.for_roles(tree, [r.name for r in res.roles])
    book = playbooks.fallback(tree, fqdn=res.identity.fqdn, hostname=res.identity.hostname)
    if book is None:
        looked = _places_looked(res.settings, res.identity, None, None)
        roles.resolve_roles(res.settings, looked=[
            *looked, f"fallback playbooks: no {res.identity.fqdn}.yml, "
            f"{res.identity.hostname}.yml or local.yml in the source, and no playbook named "
            "(pullboot run site.yml, or the playbooks setting)"])
        raise AssertionError("unreachable: resolve_roles raises without roles")
    log.info("no role resolved; running fallback playbook %s", book.name)
    return (book,)


def _inventories(res: Resolution, tree: Path) -> Inventories:
    chosen = playbooks.inventories(tree, res.settings.get("run.inventory"))
    log.info("inventory: localhost%s (%s)", "".join(f", {s}" for s in chosen.shown(tree)),
             chosen.chosen_by)
    return chosen


def _limit(res: Resolution) -> str:
    """run.limit, else ansible-pull's default: this host under each of its names."""
    from pullboot.runner import default_limit

    limit = res.settings.get("run.limit")
    if limit:
        return str(limit)
    return default_limit(res.identity.fqdn, res.identity.hostname)


def _extravars(ctx: _RunContext, res: Resolution) -> tuple[dict[str, Any], frozenset[str]]:
    """The play's extra vars, and the names whose values are data, never templates.

    Values from instance tags and user-data, and everything under ``pullboot``
    (identity, tags), are handed to ansible as ``!unsafe``: ansible templates
    extra vars, so a tag value ``{{ lookup('pipe', ...) }}`` would otherwise run
    a command as root wherever the play uses the var.
    """
    out = dict(res.settings.var_values())
    data = {name for name, r in res.settings.vars.items() if not r.from_host}
    out["pullboot"] = {
        "run_id": ctx.run_id,
        "instance": res.identity.as_dict(),
        "tags": dict(res.identity.tags),
        "roles": [r.name for r in res.roles],
        "source": {"url": ctx.source.url, "kind": ctx.source.kind, "ref": ctx.source.ref,
                   "revision": ctx.source.revision, "stale": ctx.source.stale},
    }
    return out, frozenset({*data, "pullboot"})


def _identity(base: config.Settings, environ: Mapping[str, str] | None,
              cancel: threading.Event) -> Identity:
    if not base.get("imds.enabled") or imds_disabled(environ):
        log.info("IMDS disabled (%s); local identity only",
                 "AWS_EC2_METADATA_DISABLED" if imds_disabled(environ)
                 else f"imds.enabled from {base.origin('imds.enabled')}")
        return local_identity()
    client = ImdsClient(ImdsOptions(
        endpoint=imds_endpoint(environ), timeout=base.get("imds.timeout"),
        budget=base.get("imds.budget"), allow_v1=base.get("imds.allow_v1")), cancel=cancel)
    identity = read_identity(client, read_tags=base.get("imds.tags"))
    log.info("instance %s in %s (%s)", identity.instance_id, identity.region,
             identity.instance_type)
    if identity.tags_from is None and base.get("ec2_tags"):
        identity = read_ec2_api_tags(identity)
    return identity


def _places_looked(settings: config.Settings, identity: Identity,
                   section: Mapping[str, Any] | None, config_path: Path | None) -> list[str]:
    tag = settings.get("role_tag")
    return [
        "--role on the command line: not given",
        "PULLBOOT_ROLE / PULLBOOT_ROLES: not set",
        "user-data 'pullboot:' section: " + (
            "no role" if section else "none" if identity.source == "imds" else "IMDS disabled"),
        f"instance tag {tag!r}: " + ("absent" if identity.tags_from else
                                     identity.tags_note or "tags not read"),
        f"config file {config_path or ''}: no 'role'/'roles'",
    ]


def _check_source_choice(settings: config.Settings) -> None:
    """A source from tags or user-data must not sidestep the host's verification."""
    source = settings.resolved["source"]
    if source.value is None or source.from_host:
        return
    from pullboot.sources.base import detect_kind

    trust.check_source_choice(
        kind=detect_kind(source.value), origin=source.origin, from_host=source.from_host,
        verify_git=bool(settings.get("git.verify_commit")),
        verify_s3=bool(settings.get("s3.require_signature")))


def _log_origins(settings: config.Settings) -> None:
    for key, value in settings.resolved.items():
        if value.origin not in ("default", "merged"):
            log.info("setting %s = %r (from %s)", key, values.shown(key, value.value),
                     value.origin)
    for name, r in settings.vars.items():
        log.info("var %s (from %s)", name, r.origin)  # values may be sensitive


def _cli_layer(req: Request) -> config.Layer:
    return config.Layer("cli", {key: config.coerce(key, value, where="the command line")
                                for key, value in req.cli.items()})


def _clock_check(state: StateDir, started_at: str) -> list[str]:
    """A warning when the wall clock is behind the previous run's start (clock jumped)."""
    previous = next(iter(state.reports()), None)
    before = str((previous or {}).get("started_at") or "")
    if before and before > started_at:
        message = (f"the clock went backwards: this run started at {started_at}, before the "
                   f"previous run {previous.get('run_id') if previous else ''} ({before})")
        log.warning("%s", message)
        return [message]
    return []


def _phase(req: Request, phase: str, run_id: str) -> None:
    log.debug("phase %s", phase)
    if req.on_phase is not None:
        req.on_phase(phase, run_id)


def _check_cancel(req: Request) -> None:
    if req.cancel.is_set():
        raise Canceled("canceled by a signal before the play started")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

