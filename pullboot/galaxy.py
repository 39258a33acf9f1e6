"""Install a tree's ``requirements.yml`` into the release, never globally.

Collections go to ``<release>/.pullboot/collections`` and roles to
``<release>/.pullboot/roles`` (the runner puts both on Ansible's search
paths). Installs are cached under ``cache/galaxy/<key>``: an unchanged
requirements file costs a copy, not an ansible-galaxy run. The key is the
file's sha256 plus, for requirements fetched with git at a version that is not
a commit sha (``version: main``, a tag, none), the commits ``git ls-remote``
resolves them to now: a branch that moved is installed again, and a release
whose recorded key is out of date gets the new install (:func:`refresh`).
Requirements that point at tarballs or directories inside the tree work
offline, because ansible-galaxy runs with the tree as its working directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import yaml

from pullboot.bounded import load_yaml
from pullboot.errors import SourceError
from pullboot.values import check_source_url

log = logging.getLogger(__name__)

CANDIDATES: Final = ("requirements.yml", "requirements.yaml", "collections/requirements.yml",
                     "roles/requirements.yml")
INSTALL_DIR: Final = ".pullboot"
TIMEOUT_S: Final = 600
# Bounds of the moving-version check: git requirements looked at, seconds each.
MAX_GIT_REQUIREMENTS: Final = 64
LS_REMOTE_TIMEOUT_S: Final = 30
KEY_FILE: Final = "requirements.key"
KEEP_PER_FILE: Final = 3
_SHA_RE: Final = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def find_requirements(tree: Path) -> Path | None:
    """The first requirements file in ``tree``, if any."""
    return next((tree / c for c in CANDIDATES if (tree / c).is_file()), None)


def install_requirements(tree: Path, *, cache: Path) -> bool:
    """Install what ``tree`` requires into ``tree/.pullboot``; True if anything was needed."""
    req = find_requirements(tree)
    if req is None:
        return False
    install_requirements_into(tree, req, cache=cache, key=_cache_key(req, cache),
                              dest=tree / INSTALL_DIR)
    return True


def refresh(release: Path, *, cache: Path) -> bool:
    """Re-install an existing release's requirements if what they resolve to moved.

    A release is reused while the tree's revision is unchanged, so without this
    a ``version: main`` role would stay at its first commit. The new install is
    built beside the old one and swapped in (the run lock serialises runs).
    True if the release's requirements were replaced.
    """
    req = find_requirements(release)
    if req is None:
        return False
    key = _cache_key(req, cache)
    installed = release / INSTALL_DIR
    try:
        recorded = (installed / KEY_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        recorded = ""
    if recorded == key:
        return False
    log.info("galaxy requirements %s resolve to new commits; installing them again", req.name)
    fresh = release / f"{INSTALL_DIR}.new-{os.getpid()}"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    try:
        install_requirements_into(release, req, cache=cache, key=key, dest=fresh)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)  # the release keeps its old install
        raise
    old = release / f"{INSTALL_DIR}.old-{os.getpid()}"
    if installed.exists():
        installed.rename(old)
    fresh.rename(installed)
    shutil.rmtree(old, ignore_errors=True)
    return True


def install_requirements_into(tree: Path, req: Path, *, cache: Path, key: str,
                              dest: Path) -> None:
    """The cached install ``key`` of ``req`` (made if missing) copied into ``dest``."""
    cached = cache / key
    if cached.is_dir():
        log.info("galaxy requirements %s unchanged (cached %s)", req.name, key)
    else:
        _install_into_cache(tree, req, cached)
        _prune(cache, key)
    shutil.copytree(cached, dest, symlinks=True, dirs_exist_ok=True)
    (dest / KEY_FILE).write_text(key + "\n", encoding="utf-8")


def _cache_key(req: Path, cache: Path) -> str:
    """The file's digest, plus the commits its moving git requirements resolve to now.

    When a moving requirement cannot be resolved (offline, auth), the newest
    cached install of the same file is used with a warning, so a boot without
    network still gets what it had.
    """
    digest = hashlib.sha256(req.read_bytes()).hexdigest()[:24]
    moving = list(_moving_git_requirements(req))
    if not moving:
        return digest
    resolved: list[list[str]] = []
    for url, version in moving:
        heads = _ls_remote(url, version)
        if heads is None:
            previous = _newest_for(cache, digest)
            if previous is not None:
                log.warning("galaxy requirement %s@%s could not be checked for updates; "
                            "using the cached install %s", url, version, previous)
                return previous
            resolved.append([url, version, "unresolved"])
        else:
            resolved.append([url, version, *heads])
    blob = json.dumps(resolved, sort_keys=True).encode()
    return f"{digest}-{hashlib.sha256(blob).hexdigest()[:16]}"


def _moving_git_requirements(req: Path) -> Iterator[tuple[str, str]]:
    """(url, version) of each git requirement whose version is not a commit sha."""
    doc = _load(req)
    if isinstance(doc, list):  # the old roles-only format
        doc = {"roles": doc}
    if not isinstance(doc, dict):
        return  # _sections says what is wrong with it
    roles, collections = doc.get("roles") or [], doc.get("collections") or []
    if not isinstance(roles, list) or not isinstance(collections, list):
        return
    found = 0
    for entry, field in [*((r, "src") for r in roles), *((c, "name") for c in collections)]:
        spec = _git_spec(entry, field)
        if spec is None:
            continue
        found += 1
        if found > MAX_GIT_REQUIREMENTS:
            log.warning("more than %d git requirements in %s; the rest are not checked for "
                        "updates", MAX_GIT_REQUIREMENTS, req.name)
            return
        url, version = spec
        if not _SHA_RE.match(version):
            yield url, version


def _git_spec(entry: Any, field: str) -> tuple[str, str] | None:
    """(url, version) if ``entry`` (ansible-galaxy's role or collection spec) is git-sourced."""
    if isinstance(entry, str):
        entry = {field: entry}
    if not isinstance(entry, dict) or not isinstance(entry.get(field), str):
        return None
    src = str(entry[field])
    is_git = src.startswith("git+") or entry.get("scm") == "git" or entry.get("type") == "git"
    if not is_git:
        return None
    src = src.removeprefix("git+")
    version = str(entry.get("version") or "")
    if "," in src:  # the short form: src,version[,name]
        src, _, rest = src.partition(",")
        version = version or rest.split(",")[0]
    url = src.split("#", 1)[0]  # a collection's #/subdir is not part of the repo URL
    return url, (version if version not in ("", "*") else "HEAD")


def _ls_remote(url: str, version: str) -> list[str] | None:
    """Sorted ``<sha> <ref>`` lines ``version`` resolves to at ``url``; None if git failed."""
    try:
        check_source_url(url)
    except ValueError as exc:
        log.warning("galaxy requirement %s not checked for updates: %s", url[:80], exc)
        return None
    cmd = ["git", "ls-remote", "--end-of-options", url, version]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LS_REMOTE_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False,
                              env={"GIT_SSH_COMMAND": "ssh -o BatchMode=yes", **os.environ,
                                   "GIT_TERMINAL_PROMPT": "0"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("git ls-remote %s failed: %s", url, exc)
        return None
    if proc.returncode != 0:
        log.debug("git ls-remote %s failed: %s", url, proc.stderr.strip()[-300:])
        return None
    return sorted(" ".join(line.split()) for line in proc.stdout.splitlines() if line.strip())


def _newest_for(cache: Path, digest: str) -> str | None:
    dirs = _installs_of(cache, digest)
    return dirs[0].name if dirs else None


def _installs_of(cache: Path, digest: str) -> list[Path]:
    """Cached installs of one requirements file, newest first."""
    if not cache.is_dir():
        return []
    found = [p for p in cache.iterdir() if p.is_dir() and p.name.startswith(f"{digest}-")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _prune(cache: Path, key: str) -> None:
    """Keep the KEEP_PER_FILE newest installs of a file whose git requirements move."""
    digest = key.split("-", 1)[0]
    for old in _installs_of(cache, digest)[KEEP_PER_FILE:]:
        shutil.rmtree(old, ignore_errors=True)


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


def _load(req: Path) -> Any:
    try:
        return load_yaml(req.read_bytes(), what=req.name, error=SourceError)
    except yaml.YAMLError as exc:
        raise SourceError(f"{req.name} is not valid YAML: {exc}",
                          hint="fix the requirements file in the source") from None


def _sections(req: Path) -> list[str]:
    doc = _load(req)
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
