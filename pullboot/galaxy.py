"""Install a tree's ``requirements.yml`` into the release, never globally.

Collections go to ``<release>/.pullboot/collections`` and roles to
``<release>/.pullboot/roles`` (the runner puts both on Ansible's search
paths). Installs are cached under ``cache/galaxy/<sha256 of the file>``: an
unchanged requirements file costs a copy, not an ansible-galaxy run.
Requirements that point at tarballs or directories inside the tree work
offline, because ansible-galaxy runs with the tree as its working directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import yaml

from pullboot.bounded import load_yaml
from pullboot.errors import SourceError

log = logging.getLogger(__name__)

CANDIDATES: Final = ("requirements.yml", "requirements.yaml", "collections/requirements.yml",
                     "roles/requirements.yml")
INSTALL_DIR: Final = ".pullboot"
TIMEOUT_S: Final = 600


def find_requirements(tree: Path) -> Path | None:
    """The first requirements file in ``tree``, if any."""
    return next((tree / c for c in CANDIDATES if (tree / c).is_file()), None)


def install_requirements(tree: Path, *, cache: Path) -> bool:
    """Install what ``tree`` requires into ``tree/.pullboot``; True if anything was needed."""
    req = find_requirements(tree)
    if req is None:
        return False
    digest = hashlib.sha256(req.read_bytes()).hexdigest()[:24]
    cached = cache / digest
    if cached.is_dir():
        log.info("galaxy requirements %s unchanged (cached %s)", req.name, digest)
    else:
        _install_into_cache(tree, req, cached)
    shutil.copytree(cached, tree / INSTALL_DIR, symlinks=True, dirs_exist_ok=True)
    return True


def _install_into_cache(tree: Path, req: Path, cached: Path) -> None:
    kinds = _sections(req)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if "collections" in kinds:
            _galaxy(tree, ["collection", "install", "-r", str(req), "-p",
                           str(tmp / "collections")])
        if "roles" in kinds:
            _galaxy(tree, ["role", "install", "-r", str(req), "-p", str(tmp / "roles")])
        tmp.replace(cached)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("installed galaxy requirements from %s (%s)", req.name, ", ".join(kinds))


def _sections(req: Path) -> list[str]:
    try:
        doc: Any = load_yaml(req.read_bytes(), what=req.name, error=SourceError)
    except yaml.YAMLError as exc:
        raise SourceError(f"{req.name} is not valid YAML: {exc}",
                          hint="fix the requirements file in the source") from None
    if isinstance(doc, list):  # the old roles-only format
        return ["roles"]
    if not isinstance(doc, dict):
        raise SourceError(f"{req.name} must be a mapping with collections:/roles:",
                          hint="see ansible-galaxy's requirements file format")
    return [k for k in ("collections", "roles") if doc.get(k)]


def _galaxy(tree: Path, args: list[str]) -> None:
    exe = Path(sys.executable).with_name("ansible-galaxy")
    cmd = [str(exe) if exe.exists() else "ansible-galaxy", *args]
    try:
        proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=TIMEOUT_S,
                              env={**os.environ, "ANSIBLE_NOCOLOR": "1"}, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"ansible-galaxy {' '.join(args[:2])} failed: {exc}",
                          hint="check that ansible-core is installed beside pullboot") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        message = " ".join(lines[-3:]) if lines else f"exit {proc.returncode}"
        raise SourceError(f"ansible-galaxy {' '.join(args[:2])} failed: {message}",
                          hint="fix requirements.yml; offline instances need tarballs or "
                          "directories inside the tree")
