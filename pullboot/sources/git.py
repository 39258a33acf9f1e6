"""Git sources: ``git+https://``, ``git+ssh://``, ``git+file://``, ``git://``, ``*.git``.

The cache holds one working clone per URL. Every fetch is the same shallow
``git fetch --depth 1 origin <ref>`` (a branch, a tag or a full sha all work
with protocol v2), followed by a hard reset to what was fetched, so a
force-pushed ref is followed exactly and local leftovers are cleaned.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

from pullboot.errors import SourceError, TransientSourceError
from pullboot.sources.base import Source, register

log = logging.getLogger(__name__)

# Phrases in git's stderr that mean "could not reach the server" rather than
# "the server said no": only these may fall back to the last good release.
_TRANSIENT = (
    "could not resolve host", "connection refused", "connection timed out",
    "unable to access", "could not read from remote repository",
    "the remote end hung up", "early eof", "operation timed out", "network is unreachable",
    "failed to connect", "unable to connect",
    "connection reset", "http 5", "returned error: 5",
)
_NOT_FOUND = ("couldn't find remote ref", "not our ref", "no such ref", "invalid refspec",
              "unknown revision")


def git_url(url: str) -> str:
    """The URL git itself understands (``git+https://x`` -> ``https://x``)."""
    return url[4:] if url.startswith("git+") else url


@register
class GitSource(Source):
    """A shallow working clone per URL, reset to the fetched commit."""

    kind = "git"

    @property
    def repo_dir(self) -> Path:
        key = hashlib.sha256(git_url(self.spec.url).encode()).hexdigest()[:16]
        return self.cache_dir / key

    def fetch(self) -> str:
        import git  # GitPython: ~0.35 s to import, so only for git sources

        ref = self.spec.ref or "HEAD"
        repo = self._open_or_init(git)
        args = ["--depth", "1"] if not self.spec.options.get("full") else []
        try:
            repo.git.fetch("--no-tags", "--force", *args, "origin", ref,
                           env=_git_env())
            sha = str(repo.git.rev_parse("FETCH_HEAD^{commit}"))
            repo.git.reset("--hard", sha)
            repo.git.clean("-ffdx")
        except git.GitCommandError as exc:
            raise _classify(exc, self.display_url, ref) from None
        log.info("git %s at %s is %s", self.display_url, ref, sha[:12])
        return sha

    def export(self, dest: Path) -> None:
        shutil.copytree(self.repo_dir, dest, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git"))

    def _open_or_init(self, git: Any) -> Any:
        path = self.repo_dir
        if (path / ".git").is_dir():
            try:
                repo = git.Repo(path)
                repo.git.remote("set-url", "origin", git_url(self.spec.url))
                return repo
            except (git.InvalidGitRepositoryError, git.GitCommandError):
                log.warning("git cache %s is damaged; recreating it", path)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        repo = git.Repo.init(path)
        repo.git.remote("add", "origin", git_url(self.spec.url))
        return repo


def _git_env() -> dict[str, str]:
    # Never prompt at boot (there is no one to answer), and bound slow servers.
    return {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=15",
            "GIT_HTTP_LOW_SPEED_LIMIT": "1000", "GIT_HTTP_LOW_SPEED_TIME": "30"}


def _classify(exc: Any, url: str, ref: str) -> SourceError:
    stderr = str(getattr(exc, "stderr", "") or "").strip()
    last = stderr.splitlines()[-1].strip() if stderr else str(exc)
    low = stderr.lower()
    if any(p in low for p in _NOT_FOUND):
        return SourceError(f"git {url}: ref {ref!r} not found ({last})",
                           hint="use an existing branch, tag or full commit sha")
    if "authentication failed" in low or "permission denied" in low:
        return SourceError(f"git {url}: access denied ({last})",
                           hint="check the deploy key or token the instance uses")
    if any(p in low for p in _TRANSIENT):
        return TransientSourceError(f"git {url} is unreachable ({last})",
                                    hint="check the network path and that the server is up")
    return SourceError(f"git fetch of {url} at {ref!r} failed: {last}",
                       hint="run the same git fetch by hand to see why")
