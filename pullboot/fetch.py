"""Fetch step: from a source URL to a complete release dir and the ``current`` switch.

The tree a play runs from is always a committed ``releases/<id>/`` dir,
addressed by its own path (not through ``current``), so a later switch never
changes files under a running play.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pullboot import sources
from pullboot.errors import ConfigError
from pullboot.pipeline import Resolution
from pullboot.report import SourceInfo
from pullboot.state import release_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Release:
    """A tree ready to run and what it is."""

    tree: Path
    info: SourceInfo


def make_source(res: Resolution) -> sources.Source:
    """The source object for the resolved settings (no I/O)."""
    url = res.settings.get("source")
    if not url:
        raise ConfigError(
            "no source: pullboot does not know where to fetch playbooks from",
            hint="pass --source URL, set 'source:' in the config file or user-data, "
            "or tag the instance 'pullboot:source'",
        )
    spec = sources.SourceSpec(
        url=url, ref=res.settings.get("ref"), roles=tuple(r.name for r in res.roles),
        options={"region": res.identity.region},
    )
    return sources.create(spec, res.state.cache)


def fetch_release(res: Resolution, *, switch: bool = True) -> Release:
    """Fetch the source, commit it as a release, and (if ``switch``) point ``current`` at it."""
    state = res.state
    src = make_source(res)
    state.clean_leftovers()
    revision = src.fetch()
    rid = release_id(src.kind, revision)
    target = state.release(rid)
    if target.is_dir():
        log.info("release %s already present; not exported again", rid)
        os.utime(target)  # keep it newest for pruning
    else:
        staging = state.staging()
        try:
            src.export(staging)
            state.commit_release(staging, rid)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if switch:
        state.switch_current(rid)
        state.prune_releases(res.settings.get("keep_releases"), protect={rid})
    info = SourceInfo(url=src.display_url, kind=src.kind, ref=res.settings.get("ref"),
                      revision=revision, release=rid)
    log.info("source %s (%s) at %s -> release %s", info.url, info.kind, revision, rid)
    return Release(tree=target, info=info)
