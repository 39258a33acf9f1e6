"""Fetch step: from a source URL to a complete release dir and the ``current`` switch.

* Transient failures (network, DNS, 5xx, timeouts) are retried with
  exponential backoff and jitter (:func:`pullboot.retry.retry`); the whole
  fetch, every attempt and wait included, ends within ``fetch.retry_budget``
  (at least :data:`MIN_FETCH_S`): a server that accepts and never answers
  costs that long, not forever. SIGTERM ends it at once (exit 5, no
  fallback: a canceled run runs nothing). Then, with
  ``on_source_failure: last-good``, the release of the last successful run is
  used and marked stale. Integrity and auth failures are never retried and
  never fall back silently: they fail the run (exit 4).
* The tree a play runs from is always a committed ``releases/<id>/`` dir,
  addressed by its own path (not through ``current``), so a later switch
  never changes files under a running play.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from typing import Any

from pullboot import __version__, galaxy, manifest, sources
from pullboot.errors import (
    Canceled,
    ConfigError,
    IntegrityError,
    SourceError,
    TransientSourceError,
)
from pullboot.model import Release, Resolution, SourceInfo
from pullboot.retry import Backoff, Cancel, Deadline, retry
from pullboot.state import release_id

log = logging.getLogger(__name__)

BACKOFF = Backoff(base=0.5, cap=10.0)
# A fetch always gets this long, even with fetch.retry_budget 0 (no retries).
MIN_FETCH_S = 5.0
# ``--only-if-changed`` asks cheaply; it must not hold the boot for long.
REVISION_CHECK_CAP_S = 10.0


def make_source(res: Resolution) -> sources.Source:
    """The source object for the resolved settings (no I/O)."""
    url = res.settings.get("source")
    if not url:
        raise ConfigError(
            "no source: pullboot does not know where to fetch playbooks from",
            hint="pass --source URL, set 'source:' in the config file or user-data, "
            "or tag the instance 'pullboot:source'",
        )
    options: dict[str, Any] = {
        key: r.value for key, r in res.settings.resolved.items()
        if key.startswith(("git.", "s3.", "fetch."))
    }
    options["region"] = res.identity.region
    # Credentials go only to a source the host chose (sources.git._credentials_allowed).
    options["source_from_host"] = res.settings.resolved["source"].from_host
    spec = sources.SourceSpec(url=url, ref=res.settings.get("ref"),
                              roles=tuple(r.name for r in res.roles), options=options)
    return sources.create(spec, res.state.cache)


def fetch_deadline(budget: float, cancel: Cancel = None) -> Deadline:
    """The deadline of one whole fetch: ``fetch.retry_budget`` seconds (>= MIN_FETCH_S)."""
    return Deadline.after(max(budget, MIN_FETCH_S), cancel=cancel)


def with_retries(what: str, src: sources.Source, attempt: Callable[[], str], *,
                 deadline: Deadline) -> str:
    """``attempt()`` (an operation of ``src``) retried on TransientSourceError until ``deadline``.

    ``src.deadline`` is set for the attempt to bound its own I/O. A cancel
    (SIGTERM) becomes :class:`Canceled`, which is never a reason to fall back.
    """
    src.deadline = deadline
    try:
        return retry(lambda _n: attempt(), deadline=deadline, backoff=BACKOFF, what=what,
                     retryable=lambda e: isinstance(e, TransientSourceError),
                     level=logging.WARNING)
    except TransientSourceError:
        if deadline.canceled():
            raise Canceled(f"canceled by a signal during the {what}") from None
        raise


def fetch_release(res: Resolution, *, switch: bool = True,
                  cancel: threading.Event | None = None) -> Release:
    """Fetch the source, commit it as a release, and (if ``switch``) point ``current`` at it.

    Falls back to the last good release on a transient failure when allowed.
    """
    state = res.state
    src = make_source(res)
    state.clean_leftovers()
    try:
        deadline = fetch_deadline(res.settings.get("fetch.retry_budget"), cancel)
        revision = with_retries(f"fetch of {src.display_url}", src, src.fetch,
                                deadline=deadline)
    except TransientSourceError as exc:
        return _last_good_or_raise(res, src, exc)
    rid = release_id(src.kind, revision)
    target = state.release(rid)
    warnings = list(src.warnings)
    problem = state.release_problem(rid) if target.is_dir() else None
    if target.is_dir() and problem is None:
        log.info("release %s already present and unmodified; not exported again", rid)
        os.utime(target)  # keep it newest for pruning
        if res.settings.get("galaxy.enabled"):  # a version: main requirement may have moved
            galaxy.refresh(target, cache=res.state.cache / "galaxy")
    else:
        if problem is not None:
            warnings.append(f"release {rid} differs from what was fetched ({problem}); "
                            "rebuilt from the source")
            log.warning("%s", warnings[-1])
        _build_release(res, src, rid, replace=problem is not None)
    if switch:
        state.switch_current(rid)
        protect = {rid, state.last_good_release() or ""}
        state.prune_releases(res.settings.get("keep_releases"), protect=protect)
    info = SourceInfo(url=src.display_url, kind=src.kind, ref=res.settings.get("ref"),
                      revision=revision, release=rid)
    log.info("source %s (%s) at %s -> release %s", info.url, info.kind, revision, rid)
    return Release(tree=target, info=info, warnings=tuple(warnings))


def _build_release(res: Resolution, src: sources.Source, rid: str, *,
                   replace: bool = False) -> None:
    staging = res.state.staging()
    try:
        src.export(staging)
        if res.settings.get("galaxy.enabled"):
            galaxy.install_requirements(staging, cache=res.state.cache / "galaxy")
        res.state.commit_release(staging, rid, replace=replace)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise SourceError(f"could not store release {rid}: {exc.strerror}",
                          hint="free space in the state dir; the last good release is "
                          "untouched") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _last_good_or_raise(res: Resolution, src: sources.Source,
                        exc: TransientSourceError) -> Release:
    rid = res.state.last_good_release()
    if res.settings.get("on_source_failure") != "last-good" or rid is None:
        if rid is None:
            exc.hint = f"{exc.hint or ''} (no last good release to fall back to)".strip()
        raise exc
    problem = res.state.release_problem(rid)
    if problem is not None and (res.state.release(rid) / manifest.MANIFEST).exists():
        raise IntegrityError(
            f"source unreachable ({exc.message}), and the last good release {rid} differs "
            f"from what was fetched ({problem}): not run",
            hint="undo the change on the host, or let pullboot fetch the release again once "
            "the source is reachable; a release edited in place is never run") from None
    record = res.state.last_success() or {}
    log.warning("source unreachable (%s); running the last good release %s", exc.message, rid)
    info = SourceInfo(url=src.display_url, kind=src.kind, ref=res.settings.get("ref"),
                      revision=record.get("revision"), release=rid, stale=True,
                      stale_reason=exc.message)
    return Release(tree=res.state.release(rid), info=info)


def change_digest(res: Resolution, revision: str | None) -> str:
    """What must be equal for a run to count as unchanged: revision, roles, vars, options."""
    settings = res.settings
    material = {
        "source": settings.get("source"), "ref": settings.get("ref"), "revision": revision,
        "roles": [r.name for r in res.roles], "vars": settings.var_values(),
        "version": __version__,
        "options": {k: settings.get(k) for k in ("run.check", "run.diff", "run.tags",
                                                 "run.skip_tags", "run.limit",
                                                 "run.inventory", "playbooks")},
    }
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def remote_revision(res: Resolution, src: sources.Source) -> str:
    """``src``'s current revision by the cheapest means (ls-remote, HEAD); no download."""
    budget = min(res.settings.get("fetch.retry_budget"), REVISION_CHECK_CAP_S)
    return with_retries(f"revision check of {src.display_url}", src, src.remote_revision,
                        deadline=fetch_deadline(budget))
