"""Which playbooks to run from a fetched tree, and with which inventory.

Named playbooks (the ``playbooks`` setting, ``pullboot run site.yml``: what
ansible-pull takes on its command line) run as named, relative to the tree.
Otherwise a resolved role ``web`` runs ``playbooks/web.yml`` (or ``.yaml``), and a
missing one is an error that lists the roles the tree does have, rather than
quietly running something else. Only when no role was resolved at all does
the ansible-pull fallback apply: ``<fqdn>.yml``, ``<hostname>.yml``,
``local.yml``, at the tree root or under ``playbooks/``.
"""

from __future__ import annotations

import configparser
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pullboot.errors import InventoryError, PlaybookError
from pullboot.values import safe_host_stem

log = logging.getLogger(__name__)

_EXTS = (".yml", ".yaml")
# Inventories a tree may hold at its root when nothing names one, in order.
TREE_INVENTORIES: Final = ("inventory", "hosts", "hosts.ini", "hosts.yml", "hosts.yaml")


def named(tree: Path, names: Sequence[str]) -> tuple[Path, ...]:
    """The playbooks ``names`` (relative to ``tree``), in order; PlaybookError naming the gaps.

    Like ansible-pull's ``playbook.yml`` arguments, but no name (and no link in
    the tree) can reach outside the tree.
    """
    found: list[Path] = []
    missing: list[str] = []
    for name in names:
        # Shapes were checked when the setting was read (values.check_tree_path);
        # in_tree is the last line, for links in the tree.
        path = in_tree(tree, name)
        if path is None or not path.is_file():
            missing.append(name)
        else:
            found.append(path)
    if missing:
        have = sorted(p.name for p in tree.iterdir()
                      if p.suffix in _EXTS and p.is_file() and _inside(p, tree))
        raise PlaybookError(
            f"playbook(s) {', '.join(missing)} not found in the source (a file inside the "
            f"fetched tree); playbooks at its root: {', '.join(have) if have else 'none'}",
            hint="fix the playbook name (playbooks setting or the run/plan arguments); it is "
                 "relative to the tree, e.g. site.yml or playbooks/web.yml")
    return tuple(found)


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


def in_tree(tree: Path, rel: str) -> Path | None:
    """``tree / rel`` if it exists and (links resolved) stays inside ``tree``, else None."""
    path = tree / rel
    return path if _inside(path, tree) else None


@dataclass(frozen=True)
class Inventories:
    """The tree's inventories for the play, and why these (for the log and plan).

    ``paths`` are files or directories; ``hosts`` are the names of inline host
    lists (``-i localhost,``), which the runner writes into an inventory file.
    """

    paths: tuple[Path, ...] = ()
    hosts: tuple[str, ...] = ()
    chosen_by: str = "none: localhost only"

    def shown(self, tree: Path) -> list[str]:
        """The inventories as a person would name them: tree-relative, host lists as given."""
        paths = [str(p.relative_to(tree)) if p.is_relative_to(tree) else str(p)
                 for p in self.paths]
        return paths + ([",".join(self.hosts) + ","] if self.hosts else [])


def inventories(tree: Path, names: Sequence[str]) -> Inventories:
    """The inventories to use, with ansible-pull's precedence.

    ``names`` (``-i`` / ``run.inventory``) win; else the tree's ``ansible.cfg``
    ``inventory =`` (what ansible-pull's ansible-playbook reads, run inside the
    checkout); else the first of TREE_INVENTORIES at the tree root. A named
    inventory that is missing is an InventoryError: a group play would
    otherwise be skipped and the run "succeed".
    """
    if names:
        return _named_inventories(tree, names)
    from_cfg = _cfg_inventories(tree)
    if from_cfg is not None:
        return from_cfg
    for name in TREE_INVENTORIES:
        path = in_tree(tree, name)
        if path is not None:
            return Inventories(paths=(path,), chosen_by=f"{name} at the tree root")
    return Inventories()


def _named_inventories(tree: Path, names: Sequence[str]) -> Inventories:
    paths: list[Path] = []
    hosts: list[str] = []
    missing: list[str] = []
    for name in names:  # shapes checked when read (values.check_inventory)
        if "," in name:
            hosts.extend(h.strip() for h in name.split(",") if h.strip())
            continue
        path = in_tree(tree, name)
        if path is None:
            missing.append(name)
        else:
            paths.append(path)
    if missing:
        raise InventoryError(
            f"inventory {', '.join(missing)} not found in the source (a file or directory "
            "inside the fetched tree)",
            hint="fix -i / run.inventory: paths are relative to the tree, e.g. hosts.ini or "
                 "inventory/prod; a host list ends with ',' (localhost,)")
    return Inventories(paths=tuple(paths), hosts=tuple(dict.fromkeys(hosts)),
                       chosen_by="named (-i / run.inventory)")


def _cfg_inventories(tree: Path) -> Inventories | None:
    """``inventory =`` of the tree's ansible.cfg, resolved as ansible does (None if unset).

    Relative entries are relative to the file's directory (the tree); the tree
    is the committers' code, so an absolute entry (``/etc/ansible/hosts``) is
    honoured as ansible itself would. Missing entries are skipped with a
    warning, as ansible does.
    """
    listed = ansible_cfg_paths(tree, "inventory", sep=",")
    if listed is None:
        return None
    paths: list[Path] = []
    for path in listed:
        if path.exists():
            paths.append(path)
        else:
            log.warning("ansible.cfg inventory %s does not exist; skipped", path)
    return Inventories(paths=tuple(paths), chosen_by="the tree's ansible.cfg")


def ansible_cfg_paths(tree: Path, key: str, *, sep: str = os.pathsep) -> list[Path] | None:
    """The paths ``[defaults] key`` of the tree's ansible.cfg lists, resolved as ansible does.

    ``~`` and ``$VARS`` expanded, relative entries relative to the file's
    directory (the tree); None when the key is unset. ``sep`` is ``,`` for
    ansible's pathlist settings (inventory), ``:`` for pathspec ones (roles_path).
    """
    value = ansible_cfg_value(tree / "ansible.cfg", key)
    if value is None:
        return None
    entries = (os.path.expandvars(os.path.expanduser(e.strip())) for e in value.split(sep))
    return [tree / entry for entry in entries if entry]


def ansible_cfg_value(cfg: Path, key: str) -> str | None:
    """``[defaults] key`` of an ansible.cfg, or None when unset or unreadable."""
    if not cfg.is_file():
        return None
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(cfg, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    return parser.get("defaults", key, fallback=None)


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
