"""Git sources: ``git+https://``, ``git+ssh://``, ``git+file://``, ``git://``, ``*.git``.

The cache holds one working clone per URL. Every fetch is the same shallow
``git fetch --depth 1 origin <ref>`` (a branch, a tag or a full sha all work
with protocol v2), followed by a hard reset to what was fetched, so a
force-pushed ref is followed exactly and local leftovers are cleaned.

Credentials never touch the URL, the repo's config, logs or the report: an
HTTPS token travels as an ``http.extraHeader`` set through ``GIT_CONFIG_*``
environment variables of the git process only, and an SSH deploy key lives
in a 0600 temp file for the duration of one git command.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pullboot import secrets
from pullboot.errors import (
    AuthError,
    ConfigError,
    IntegrityError,
    SourceError,
    TransientSourceError,
)
from pullboot.sources.base import Source, register

log = logging.getLogger(__name__)

# Phrases in git's stderr that mean "could not reach the server" rather than
# "the server said no": only these may fall back to the last good release.
_TRANSIENT = (
    "could not resolve host", "connection refused", "connection timed out",
    "unable to access", "could not read from remote repository",
    "the remote end hung up", "early eof", "operation timed out", "network is unreachable",
    "failed to connect", "unable to connect", "connection reset", "http 5",
    "returned error: 5", "unexpected disconnect",
)
_NOT_FOUND = ("couldn't find remote ref", "not our ref", "no such ref", "invalid refspec",
              "unknown revision")
_AUTH = ("authentication failed", "permission denied", "returned error: 401",
         "returned error: 403", "host key verification failed", "could not read username")
_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_SSH_KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-")


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

    def opt(self, name: str) -> Any:
        return self.spec.options.get(f"git.{name}")

    def fetch(self) -> str:
        import git  # GitPython: ~0.35 s to import, so only for git sources

        ref = self.spec.ref or "HEAD"
        repo = self._open_or_init(git)
        depth = [] if self.opt("full") else ["--depth", "1"]
        with self._auth_env() as env:
            try:
                repo.git.fetch("--no-tags", "--force", *depth, "origin", ref, env=env)
                sha = str(repo.git.rev_parse("FETCH_HEAD^{commit}"))
                repo.git.reset("--hard", sha)
                repo.git.clean("-ffdx")
                if self.opt("submodules"):
                    repo.git.submodule("update", "--init", "--recursive", *depth, env=env)
            except git.GitCommandError as exc:
                raise _classify(exc.stderr, str(exc), self.display_url, ref) from None
        if self.opt("verify_commit"):
            self._verify(sha)
        log.info("git %s at %s is %s", self.display_url, ref, sha[:12])
        return sha

    def export(self, dest: Path) -> None:
        shutil.copytree(self.repo_dir, dest, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git"))

    def remote_revision(self) -> str:
        """``git ls-remote`` (a plain subprocess: no GitPython import on the fast path)."""
        ref = self.spec.ref or "HEAD"
        if _SHA_RE.match(ref):
            return ref
        with self._auth_env() as env:
            proc = subprocess.run(["git", "ls-remote", git_url(self.spec.url), ref],
                                  capture_output=True, text=True, env={**os.environ, **env},
                                  timeout=60, check=False)
        if proc.returncode != 0:
            raise _classify(proc.stderr, proc.stderr, self.display_url, ref)
        refs: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            sha, _, name = line.partition("\t")
            refs[name] = sha
        for name in (f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
            if name in refs:
                return refs[name]
        raise SourceError(f"git {self.display_url}: ref {ref!r} not found",
                          hint="use an existing branch, tag or full commit sha")

    # -- internals -------------------------------------------------------------

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

    @contextmanager
    def _auth_env(self) -> Iterator[dict[str, str]]:
        """Environment for one git command: no prompts, strict SSH, credentials if any."""
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false",
               "GIT_HTTP_LOW_SPEED_LIMIT": "1000", "GIT_HTTP_LOW_SPEED_TIME": "30"}
        region = self.spec.options.get("region")
        token_ref = self.opt("token")
        if token_ref:
            token = secrets.resolve(token_ref, region=region, what="git.token")
            user = self.opt("token_user") or "x-access-token"
            basic = base64.b64encode(f"{user}:{token.strip()}".encode()).decode()
            env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"})
        with secrets.private_tempdir("pullboot-git-") as tmp:
            ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
            ssh += self._host_key_options()
            key_ref = self.opt("ssh_key")
            if key_ref:
                key = Path(tmp, "deploy_key")
                key.touch(mode=0o600)
                material = secrets.resolve(key_ref, region=region, what="git.ssh_key")
                key.write_text(material if material.endswith("\n") else material + "\n")
                ssh += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
            env["GIT_SSH_COMMAND"] = shlex.join(ssh)
            yield env
        # The temp dir (and the key in it) is gone here, whatever happened.

    def _host_key_options(self) -> list[str]:
        known = self.opt("known_hosts")
        if self.opt("accept_new_host_key"):
            # Trust on first use, remembered in the state dir for the next runs.
            known = known or str(self.cache_dir / "known_hosts")
            return ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known}"]
        opts = ["-o", "StrictHostKeyChecking=yes"]
        if known:
            opts += ["-o", f"UserKnownHostsFile={known}"]
        return opts

    def _verify(self, sha: str) -> None:
        signers = [s.strip() for s in self.opt("allowed_signers") or [] if s.strip()]
        if not signers:
            raise ConfigError("git.verify_commit is on but git.allowed_signers is empty",
                              hint="list the GPG fingerprints or SSH public keys allowed "
                              "to sign")
        with tempfile.TemporaryDirectory(prefix="pullboot-verify-") as home:
            env = {"GNUPGHOME": home, "GIT_CONFIG_NOSYSTEM": "1"}
            for key_file in self.opt("gpg_keys") or []:
                _run(["gpg", "--batch", "--quiet", "--import", key_file], env)
            allowed = Path(home, "allowed_signers")
            allowed.write_text("".join(f'* namespaces="git" {s}\n' for s in signers
                                       if s.startswith(_SSH_KEY_PREFIXES)))
            proc = subprocess.run(
                ["git", "-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit",
                 "--raw", sha], cwd=self.repo_dir, capture_output=True, text=True,
                env={**dict(os.environ), **env}, timeout=60, check=False)
        _check_signature(sha, proc.returncode, proc.stderr, signers)


def _check_signature(sha: str, rc: int, output: str, signers: list[str]) -> None:
    allowed = {s.replace(" ", "").upper() for s in signers}
    if rc != 0:
        why = "is not signed" if not output.strip() else "has a bad or unknown signature"
        raise IntegrityError(f"commit {sha[:12]} {why}",
                             hint="sign commits with an allowed key, or list the signer in "
                             "git.allowed_signers / git.gpg_keys")
    for line in output.splitlines():
        parts = line.split()
        if parts[:2] == ["[GNUPG:]", "VALIDSIG"] and (
                parts[2].upper() in allowed or parts[-1].upper() in allowed):
            return
        if line.startswith("Good \"git\" signature"):
            return  # ssh-keygen only accepts keys from our allowed signers file
    raise IntegrityError(f"commit {sha[:12]} is signed by a key that is not allowed",
                         hint="add the signer's fingerprint to git.allowed_signers")


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**dict(os.environ), **env},
                          timeout=60, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"{cmd[0]} failed: {proc.stderr.strip()[-300:]}",
                          hint="check the key files in git.gpg_keys")


def _classify(stderr: Any, fallback: str, url: str, ref: str) -> SourceError:
    text = str(stderr or "").strip()
    last = text.splitlines()[-1].strip() if text else fallback
    low = text.lower()
    if any(p in low for p in _NOT_FOUND):
        return SourceError(f"git {url}: ref {ref!r} not found ({last})",
                           hint="use an existing branch, tag or full commit sha")
    if any(p in low for p in _AUTH):
        return AuthError(f"git {url}: access denied ({last})",
                              hint="check the deploy key, token or known_hosts the instance "
                              "uses")
    if any(p in low for p in _TRANSIENT):
        return TransientSourceError(f"git {url} is unreachable ({last})",
                                    hint="check the network path and that the server is up")
    return SourceError(f"git fetch of {url} at {ref!r} failed: {last}",
                       hint="run the same git fetch by hand to see why")
