"""A local directory (``/path`` or ``file:///path``); revision = a content hash."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pullboot.errors import SourceError
from pullboot.sources.base import Source, register

# Version control, virtualenvs and tool caches are not part of the tree we run
# (a checkout's .mypy_cache alone can be tens of MB per release).
_SKIP = frozenset({".git", ".hg", ".svn", "__pycache__", ".molecule", ".venv", ".tox",
                   ".mypy_cache", ".ruff_cache", ".pytest_cache", "node_modules"})


@register
class DirSource(Source):
    """Copies a directory; its revision changes whenever any file's content or name does."""

    kind = "dir"

    @property
    def path(self) -> Path:
        url = self.spec.url
        if url.startswith("file://"):
            return Path(unquote(urlsplit(url).path))
        return Path(url).expanduser().absolute()

    def fetch(self) -> str:
        root = self.path
        if not root.is_dir():
            raise SourceError(f"source directory {root} does not exist",
                              hint="check --source / the 'source' setting")
        digest = hashlib.sha256()
        for path in sorted(_walk(root)):
            rel = path.relative_to(root).as_posix()
            digest.update(rel.encode() + b"\0")
            if path.is_symlink():
                digest.update(b"L" + os.readlink(path).encode())
            else:
                digest.update(b"F" + _file_hash(path))
        return "sha256:" + digest.hexdigest()[:32]

    def remote_revision(self) -> str:
        return self.fetch()  # hashing is the cheapest honest answer for a directory

    def export(self, dest: Path) -> None:
        shutil.copytree(self.path, dest, symlinks=True, dirs_exist_ok=True,
                        ignore=lambda _d, names: [n for n in names if n in _SKIP])


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP]
        out.extend(Path(dirpath, f) for f in filenames)
    return out


def _file_hash(path: Path) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()
