"""A release's manifest: what was fetched, so that a release edited on the host is never rerun.

ansible-pull refuses local modifications; pullboot records, when a release is
committed, the sha256 of every file and the target of every link in it
(``<release>/.pullboot/manifest.json``, written before the rename that
publishes the release) and checks it before a release is reused. Not hashed:
``.pullboot/`` (pullboot's own: galaxy installs, refreshed in place, and this
file), ``__pycache__`` dirs and ``*.pyc`` (Python writes them when ansible loads a
plugin from the tree) and ``.git/`` except its ``HEAD`` (the revision, item 9 of
issue 13; objects and index are git's business).

Cost: one read of every file; 0.045 s to verify this repository's tree (262
files, 1.2 MiB) on a busy 2-core test machine (README, "Sources you can trust").
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Final

from pullboot.atomic import read_json, write_json_atomic

MANIFEST: Final = Path(".pullboot") / "manifest.json"
_SKIP_TOP: Final = frozenset({".pullboot", ".git"})
_SKIP_DIRS: Final = frozenset({"__pycache__"})
_VERSION: Final = 1
# A tree with more entries than this is not a playbook repository: not described entry by
# entry (bounded work and file size), and never reused unverified (see verify()).
MAX_ENTRIES: Final = 200_000


def describe(root: Path) -> dict[str, str]:
    """``{path: "f[x]:<sha256>" | "l:<link target>" | "o"}`` for the tree at ``root``."""
    entries: dict[str, str] = {}
    head = root / ".git" / "HEAD"
    if head.is_file() and not head.is_symlink():
        entries[".git/HEAD"] = "f:" + hashlib.sha256(head.read_bytes()).hexdigest()
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS
                         and not (here == root and d in _SKIP_TOP))
        for name in [*files, *(d for d in dirs if (here / d).is_symlink())]:
            if name.endswith(".pyc"):
                continue
            path = here / name
            entries[path.relative_to(root).as_posix()] = _entry(path)
            if len(entries) > MAX_ENTRIES:
                raise ValueError(f"more than {MAX_ENTRIES} files")
    return entries


def _entry(path: Path) -> str:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return "l:" + os.readlink(path)
    if not stat.S_ISREG(st.st_mode):
        return "o"
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"f{'x' if st.st_mode & 0o111 else ''}:{digest.hexdigest()}"


def record(root: Path) -> None:
    """Write the manifest of the (staging) tree ``root`` into it."""
    (root / MANIFEST.parent).mkdir(mode=0o700, exist_ok=True)
    write_json_atomic(root / MANIFEST, {"version": _VERSION, "files": describe(root)})


def verify(root: Path) -> str | None:
    """None when ``root`` holds exactly what its manifest records, else what differs.

    The answer names the first changed, added or removed path (sorted), or says
    there is no readable manifest (a release made by an older pullboot).
    """
    data = read_json(root / MANIFEST, dict, what="release manifest")
    recorded = data.get("files") if data else None
    if not isinstance(recorded, dict):
        return "it has no readable manifest (.pullboot/manifest.json)"
    try:
        now = describe(root)
    except (OSError, ValueError) as exc:
        return f"it cannot be read back ({getattr(exc, 'strerror', None) or exc})"
    for path in sorted(set(recorded) | set(now)):
        if path not in now:
            return f"{path} was removed"
        if path not in recorded:
            return f"{path} was added"
        if recorded[path] != now[path]:
            return f"{path} was changed"
    return None

