"""Which playbooks to run from a fetched tree.

A resolved role ``web`` runs ``playbooks/web.yml`` (or ``.yaml``), and a
missing one is an error that lists the roles the tree does have, rather than
quietly running something else. Only when no role was resolved at all does
the ansible-pull fallback apply: ``<fqdn>.yml``, ``<hostname>.yml``,
``local.yml``, at the tree root or under ``playbooks/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pullboot.errors import PlaybookError
from pullboot.values import safe_host_stem

_EXTS = (".yml", ".yaml")


def available_roles(tree: Path) -> list[str]:
    """Role names that have a playbook under ``playbooks/``."""
    folder = tree / "playbooks"
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.suffix in _EXTS and p.is_file()})


def for_roles(tree: Path, roles: Sequence[str]) -> tuple[Path, ...]:
    """``playbooks/<role>.yml`` for each role, in order; PlaybookError naming the gaps."""
    found: list[Path] = []
    missing: list[str] = []
    for role in roles:
        path = _first_file(tree, tree / "playbooks", [role])
        if path is None:
            missing.append(role)
        else:
            found.append(path)
    if missing:
        have = available_roles(tree)
        raise PlaybookError(
            f"no playbook for role(s) {', '.join(missing)} in the source "
            f"(looked for playbooks/<role>.yml); roles with playbooks: "
            f"{', '.join(have) if have else 'none'}",
            hint="fix the role name (tag, user-data or --role), or add the playbook",
        )
    return tuple(found)


def fallback(tree: Path, *, fqdn: str, hostname: str) -> Path | None:
    """The ansible-pull style playbook for a role-less instance, if the tree has one."""
    # The name decides first (fqdn beats hostname beats local), then the folder.
    # IMDS host names are untrusted: only a real host name is a candidate.
    names = [n for n in (safe_host_stem(fqdn), safe_host_stem(hostname)) if n]
    for name in dict.fromkeys([*names, "local"]):
        for folder in (tree, tree / "playbooks"):
            path = _first_file(tree, folder, [name])
            if path is not None:
                return path
    return None


def _first_file(tree: Path, folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for ext in _EXTS:
            path = folder / f"{stem}{ext}"
            if path.is_file() and _inside(path, tree):
                return path
    return None


def _inside(path: Path, tree: Path) -> bool:
    """True if ``path`` (links resolved) stays inside the fetched ``tree``.

    Role names and host names are checked before they get here; this is the
    last line: no name, and no link in the tree, can make a playbook path
    leave the release.
    """
    try:
        return path.resolve(strict=True).is_relative_to(tree.resolve(strict=True))
    except OSError:
        return False
