"""The source interface: fetch a revision into a cache, then export it as a tree.

Fetching and exporting are separate so that a revision already present as a
release costs only the (cheap) fetch, and ``plan`` can learn the revision
without writing a release.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pullboot.errors import ConfigError
from pullboot.retry import Deadline, unbounded
from pullboot.values import redact_url


@dataclass(frozen=True)
class SourceSpec:
    """What to fetch: the URL as given, an optional ref, the roles (for ``{role}`` keys)."""

    url: str
    ref: str | None = None
    roles: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


class Source(ABC):
    """One kind of source. Constructors do no I/O."""

    kind: ClassVar[str]

    def __init__(self, spec: SourceSpec, cache_dir: Path) -> None:
        self.spec = spec
        self.cache_dir = cache_dir
        # Bounds the I/O of fetch/remote_revision (set by the caller, see fetch.py);
        # a source raises TransientSourceError when it passes or is canceled.
        self.deadline: Deadline = unbounded()
        # What the last fetch noticed that the operator should know (report warnings).
        self.warnings: list[str] = []

    @property
    def display_url(self) -> str:
        """The URL with any credentials removed: safe for logs and reports."""
        return redact_url(self.spec.url)

    @abstractmethod
    def fetch(self) -> str:
        """Bring the wanted revision into the cache and return its revision id.

        Raises TransientSourceError when the source is unreachable (worth a
        retry or the last good release), SourceError when it is wrong.
        """

    @abstractmethod
    def export(self, dest: Path) -> None:
        """Write the fetched tree into the empty directory ``dest``."""

    @abstractmethod
    def remote_revision(self) -> str:
        """The revision :meth:`fetch` would return now, by the cheapest means (no download).

        Used by ``--only-if-changed`` and ``plan``; must start no ansible process.
        """


_REGISTRY: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    """Class decorator: make a source kind available to :func:`create`."""
    _REGISTRY[cls.kind] = cls
    return cls


def kinds() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def detect_kind(url: str) -> str:
    """The source kind for ``url``: ``s3``, ``git`` or ``dir`` (see the README table)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "s3":
        return "s3"
    if scheme.startswith("git+") or scheme == "git" or url.rstrip("/").endswith(".git"):
        return "git"
    if re.match(r"^[\w.-]+@[\w.-]+:", url):  # scp-like git@host:org/repo
        return "git"
    if scheme in ("", "file"):
        return "dir"
    raise ConfigError(
        f"source {redact_url(url)!r} has an unsupported scheme {scheme!r}",
        hint="use a directory path or file:///path, git+https://host/repo(.git), "
        "git+ssh://, git+file://, git://, or s3://bucket/key.tar.gz",
    )


def create(spec: SourceSpec, cache_root: Path) -> Source:
    """Instantiate the source for ``spec.url`` with its own cache dir under ``cache_root``."""
    kind = detect_kind(spec.url)
    cls = _REGISTRY.get(kind)
    if cls is None:  # pragma: no cover - every detected kind is registered
        raise ConfigError(f"no source of kind {kind!r}", hint=f"use one of {kinds()}")
    return cls(spec, cache_root / kind)
