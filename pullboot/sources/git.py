"""Git sources: ``git+https://``, ``git+ssh://``, ``git+file://``, ``git://``, ``*.git``.

The cache holds one working clone per URL. Every fetch is the same shallow
``git fetch --depth 1 origin <ref>`` (a branch, a tag or a full sha all work
with protocol v2), followed by a hard reset to what was fetched, so a
force-pushed ref is followed exactly and local leftovers are cleaned.

Credentials never touch the URL, the repo's config, logs or the report: an
HTTPS token travels as an ``http.extraHeader`` set through ``GIT_CONFIG_*``
environment variables of the git process only, and an SSH deploy key lives
in a 0600 temp file for the duration of one git command.

Values are data, never options: every git command puts ``--end-of-options``
(or ``--``) before the URL, ref or sha it is given, so a ref such as
``--upload-pack=...`` is a bad refspec, not an option; only the https, http,
ssh, git and file transports are allowed (never ``ext::``).

Deadlines: git runs in its own process group under the fetch's deadline
(:attr:`Source.deadline`, from ``fetch.retry_budget``); when it passes or the
run is canceled (SIGTERM) the whole group is killed. HTTP transfers slower
than 1000 B/s for 30 s (or the budget, if shorter) are abandoned by git
itself (``http.lowSpeedLimit``/``lowSpeedTime``); ssh has keep-alives.

Stale locks: a SIGKILLed git leaves ``*.lock`` files (``shallow.lock``,
``index.lock``, ...) that make every later git command fail. The cache repo
is pullboot's own, used only under the state dir's run lock and only by the
git children this module waits for, so a lock found there before a command
is stale by construction and is removed.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from pullboot import secrets
from pullboot.errors import (
    AuthError,
    ConfigError,
    HostKeyError,
    IntegrityError,
    SourceError,
    SourceNotFoundError,
    TransientSourceError,
)
from pullboot.retry import Deadline
from pullboot.sources.base import Source, register
from pullboot.values import redact_url

log = logging.getLogger(__name__)

# Git's own words (anywhere in its stderr, lower-cased) for each kind of failure, checked
# in this order: ssh and http say "could not read from remote repository" / "unable to
# access" after every refusal, so the network phrases are the last resort, and only they
# are transient (worth a retry or the last good release).
# ("Warning: Permanently added the RSA host key for ..." is no failure: not matched.)
_HOST_KEY = ("host key verification failed", "remote host identification has changed",
             "you have requested strict checking", "no matching host key type")
_AUTH = ("permission denied", "authentication failed", "returned error: 401",
         "returned error: 403", "could not read username", "could not read password",
         "terminal prompts disabled", "invalid username or password", "invalid credentials")
_REPO_NOT_FOUND = ("does not appear to be a git repository", "repository not found",
                   "access denied or repository not exported", "no such repository",
                   "returned error: 404", "' not found")
_REF_NOT_FOUND = ("couldn't find remote ref", "not our ref", "no such ref", "invalid refspec",
                  "unknown revision")
_REFUSED = ("transport '", "not allowed", "unsupported protocol", "disallowed")
_TRANSIENT = (
    "could not resolve host", "could not resolve hostname", "connection refused",
    "connection timed out", "unable to access", "could not read from remote repository",
    "the remote end hung up", "early eof", "operation timed out", "network is unreachable",
    "no route to host", "failed to connect", "unable to connect", "connection reset",
    "connection closed", "http 5", "returned error: 5", "unexpected disconnect",
    "temporary failure in name resolution",
)
# git's boilerplate after every remote refusal: says nothing about the cause.
_NOISE = ("please make sure you have the correct access rights", "and the repository exists.",
          "hint:")
_MAX_LINES: Final = 6
_MAX_LINE: Final = 300
_URL_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
_AUTH_HEADER_RE: Final = re.compile(r"(?i)(authorization:\s*\w+\s+)\S+")
_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
# An abbreviated commit sha, as ``git log --oneline`` shows it (7 digits) up to one short of full.
_SHORT_SHA_RE = re.compile(r"^[0-9a-fA-F]{7,39}$")
_SSH_KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-")
# Local commands (verify, gpg import) get this long at most, deadline or not.
_LOCAL_TIMEOUT_S: Final = 60.0
# How often a waiting git child is checked against the deadline and SIGTERM.
_POLL_S: Final = 0.2
_LOW_SPEED_LIMIT: Final = 1000
_LOW_SPEED_TIME_S: Final = 30
_ALLOWED_PROTOCOLS: Final = ("https", "http", "ssh", "git", "file")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL, for ``http.<url>.*`` git config keys."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _http_userinfo(url: str) -> str | None:
    """``user:password`` of an http(s) URL that carries a password, else None."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or password is None:
        return None
    return f"{unquote(user or '')}:{unquote(password)}"


def git_url(url: str) -> str:
    """The URL git itself understands (``git+https://x`` -> ``https://x``)."""
    return url[4:] if url.startswith("git+") else url


@register
class GitSource(Source):
    """A shallow working clone per URL, reset to the fetched commit."""

    kind = "git"

    @property
    def remote_url(self) -> str:
        """The URL git is given: ``git+`` dropped, and any password taken out of it."""
        url = git_url(self.spec.url)
        return redact_url(url) if _http_userinfo(url) else url

    @property
    def repo_dir(self) -> Path:
        key = hashlib.sha256(self.remote_url.encode()).hexdigest()[:16]
        return self.cache_dir / key

    def opt(self, name: str) -> Any:
        return self.spec.options.get(f"git.{name}")

    def fetch(self) -> str:
        ref = self.spec.ref or "HEAD"
        self.warnings = []
        self._open_or_init()
        depth = [] if self.opt("full") else ["--depth", "1"]
        with self._auth_env() as env:
            try:
                self._git(["fetch", "--no-tags", "--force", *depth, "--end-of-options",
                           "origin", ref], env, ref)
                sha = self._commit_of("FETCH_HEAD", env, ref)
            except SourceNotFoundError:
                if not _SHORT_SHA_RE.match(ref):
                    raise
                sha = self._fetch_short_sha(ref, env)
            if self.opt("verify_commit"):
                # Before the checkout: an unsigned commit's .gitmodules must not make git
                # fetch anything, and its tree must not land in the cache's work tree.
                self._verify(sha)
            self._git(["reset", "-q", "--hard", sha, "--"], env, ref)
            self._git(["clean", "-q", "-ffdx"], env, ref)
            self._submodules(depth, env, ref)
        log.info("git %s at %s is %s", self.display_url, ref, sha[:12])
        return sha

    def export(self, dest: Path) -> None:
        """The checked-out tree (submodules included, their ``.git`` links not), plus a
        one-commit ``.git`` of its own at the fetched commit, so that a play running
        ``git rev-parse HEAD`` (or ``git log -1``) in the release gets the revision.

        The release's ``.git`` holds a copy of that commit's objects (fetched from
        the cache repo, no remote, no hooks): it never depends on the cache.
        """
        shutil.copytree(self.repo_dir, dest, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git"))
        local = Deadline.after(_LOCAL_TIMEOUT_S, cancel=self.deadline.cancel)
        env = _base_env(local)
        sha = self._local(["rev-parse", "--verify", "HEAD^{commit}"], self.repo_dir, env,
                          local).strip()
        for args in (["init", "-q", "--template="],
                     ["fetch", "-q", "--no-tags", "--depth", "1", "--end-of-options",
                      str(self.repo_dir), sha],
                     ["update-ref", "--no-deref", "HEAD", sha],
                     ["reset", "-q", "--no-refresh"]):
            self._local(args, dest, env, local)
        # pullboot's own files (manifest, galaxy installs) are no change to the checkout.
        (dest / ".git" / "info").mkdir(exist_ok=True)
        (dest / ".git" / "info" / "exclude").write_text("/.pullboot/\n")

    def _local(self, args: list[str], cwd: Path, env: dict[str, str],
               deadline: Deadline) -> str:
        """A local git command (no network) in ``cwd``; SourceError with git's words on failure."""
        proc = _run_bounded(["git", *args], cwd=cwd, env=env, deadline=deadline,
                            what=f"git {args[0]}")
        if proc.returncode != 0:
            raise SourceError(f"could not make the release a git checkout: git {args[0]} "
                              f"failed (git: {git_words(proc.stderr)})",
                              hint="check the state dir is writable and git is installed")
        return proc.stdout

    def remote_revision(self) -> str:
        """``git ls-remote`` (no clone, no download)."""
        ref = self.spec.ref or "HEAD"
        if _SHA_RE.match(ref):
            return ref
        if _SHORT_SHA_RE.match(ref):
            # ls-remote shows no commit by a prefix: a commit the cache already has is
            # immutable, so it answers; else only a fetch can tell.
            known = self._known_commit(ref)
            return known or self.fetch()
        with self._auth_env() as env:
            proc = _run_bounded(["git", "ls-remote", "--end-of-options", self.remote_url,
                                 ref], env=env, deadline=self.deadline,
                                what=f"git ls-remote {self.display_url}")
        if proc.returncode != 0:
            raise _classify(proc.stderr, proc.stderr, self.display_url, ref)
        refs: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            sha, _, name = line.partition("\t")
            refs[name] = sha
        for name in (f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
            if name in refs:
                return refs[name]
        raise SourceNotFoundError(f"git {self.display_url}: ref {ref!r} not found",
                          hint="use an existing branch, tag or full commit sha")

    def _submodules(self, depth: list[str], env: dict[str, str], ref: str) -> None:
        """Check the tree's submodules out (``git.submodules``, on by default), or warn.

        Their URLs come from the repo, but the transport allow-list in the
        environment (:func:`_base_env`) reaches every git the submodule command
        starts: ``ext::`` and other helpers stay refused. A shallow update that
        the server refuses (a submodule commit that is no branch tip) is retried
        with history, all under the same deadline.
        """
        if not (self.repo_dir / ".gitmodules").is_file():
            return
        if not self.opt("submodules"):
            msg = ("the tree has submodules (.gitmodules) but git.submodules is off: they are "
                   "not checked out, so their directories are empty")
            log.warning("%s", msg)
            self.warnings.append(msg)
            return
        cmd = ["submodule", "update", "--init", "--recursive", "--force"]
        try:
            self._git([*cmd, *depth], env, ref)
        except TransientSourceError:
            raise
        except SourceError as exc:
            if not depth or "transport" in exc.message.lower():
                raise
            log.info("shallow submodule update refused (%s); fetching their history",
                     exc.message)
            self._git(cmd, env, ref)

    def _known_commit(self, ref: str) -> str | None:
        """The full sha of the commit ``ref`` (a short sha) names in the cache, if it has one."""
        if not (self.repo_dir / ".git").is_dir():
            return None
        proc = _run_bounded(["git", "rev-parse", "--verify", "--quiet", "--end-of-options",
                             f"{ref}^{{commit}}"], cwd=self.repo_dir,
                            env=_base_env(self.deadline), deadline=self.deadline,
                            what="git rev-parse")
        sha = proc.stdout.strip().lower()
        return sha if proc.returncode == 0 and sha.startswith(ref.lower()) else None

    # -- internals -------------------------------------------------------------

    def _commit_of(self, rev: str, env: dict[str, str], ref: str) -> str:
        sha = self._git(["rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}"],
                        env, ref).strip()
        if not _SHA_RE.match(sha):
            raise SourceError(f"git {self.display_url}: {ref!r} is not a commit ({sha[:50]})",
                              hint="use an existing branch, tag or full commit sha")
        return sha

    def _fetch_short_sha(self, ref: str, env: dict[str, str]) -> str:
        """An abbreviated sha the server cannot fetch by name, as ansible-pull's ``-C`` takes it.

        Fetches every branch and tag with their whole history (the documented
        fallback: a short sha may name any commit), bounded by the fetch
        deadline, and resolves ``ref`` locally; an ambiguous prefix is refused.
        """
        log.info("git %s: %r is no ref there; fetching all branches and tags to find the "
                 "commit it abbreviates", self.display_url, ref)
        unshallow = ["--unshallow"] if (self.repo_dir / ".git" / "shallow").exists() else []
        self._git(["fetch", "--no-tags", "--force", *unshallow, "--end-of-options", "origin",
                   "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"], env, ref)
        proc = _run_bounded(["git", "rev-parse", "--verify", "--end-of-options",
                             f"{ref}^{{commit}}"], cwd=self.repo_dir, env=env,
                            deadline=self.deadline, what="git rev-parse")
        sha = proc.stdout.strip().lower()
        if proc.returncode == 0 and _SHA_RE.match(sha) and sha.startswith(ref.lower()):
            return sha
        if "ambiguous" in proc.stderr.lower():
            raise SourceError(f"git {self.display_url}: the short sha {ref!r} is ambiguous "
                              f"(git: {git_words(proc.stderr)})",
                              hint="give more digits of the commit sha, or the full sha")
        raise SourceNotFoundError(f"git {self.display_url}: ref {ref!r} not found: no branch "
                                  "or tag by that name, and no commit on a branch or tag "
                                  "starts with it",
                                  hint="use an existing branch, tag or commit sha")

    def _git(self, args: list[str], env: dict[str, str], ref: str) -> str:
        """``git ARGS`` in the cache repo, bounded by the deadline; classified SourceError."""
        proc = _run_bounded(["git", *args], cwd=self.repo_dir, env=env, deadline=self.deadline,
                            what=f"git {args[0]} of {self.display_url}")
        if proc.returncode != 0:
            raise _classify(proc.stderr, f"git {args[0]} exited {proc.returncode}",
                            self.display_url, ref)
        return proc.stdout

    def _open_or_init(self) -> None:
        """The cache repo, ready for a fetch: stale locks gone, origin set, or made afresh."""
        path = self.repo_dir
        url = self.remote_url
        base_env = _base_env(self.deadline)
        if (path / ".git").is_dir():
            clear_stale_locks(path / ".git")
            proc = _run_bounded(["git", "remote", "set-url", "--end-of-options", "origin", url],
                                cwd=path, env=base_env, deadline=self.deadline,
                                what="git remote set-url")
            if proc.returncode == 0:
                return
            log.warning("git cache %s is damaged (%s); recreating it", path,
                        proc.stderr.strip()[-200:])
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        for args in (["init", "-q"], ["remote", "add", "--end-of-options", "origin", url]):
            proc = _run_bounded(["git", *args], cwd=path, env=base_env, deadline=self.deadline,
                                what=f"git {args[0]}")
            if proc.returncode != 0:
                raise SourceError(f"could not create the git cache {path}: "
                                  f"{proc.stderr.strip()[-300:]}",
                                  hint="check the state dir is writable and git is installed")

    @contextmanager
    def _auth_env(self) -> Iterator[dict[str, str]]:
        """Environment for one git command: no prompts, strict SSH, credentials if any."""
        extra: list[tuple[str, str]] = []
        region = self.spec.options.get("region")
        allowed = self._credentials_allowed()
        token_ref = self.opt("token") if allowed else None
        if token_ref:
            token = secrets.resolve(token_ref, region=region, what="git.token")
            user = self.opt("token_user") or "x-access-token"
            basic = base64.b64encode(f"{user}:{token.strip()}".encode()).decode()
            # Scoped to the source's own origin: a submodule (or a redirect) on another
            # host never gets the header.
            extra.append((f"http.{_origin_of(self.remote_url)}/.extraHeader",
                          f"Authorization: Basic {basic}"))
        elif userinfo := _http_userinfo(git_url(self.spec.url)):
            # user:password written into an http(s) URL: sent the same way (scoped header),
            # so the password is never in git's config, argv or the cache repo on disk.
            basic = base64.b64encode(userinfo.encode()).decode()
            extra.append((f"http.{_origin_of(self.remote_url)}/.extraHeader",
                          f"Authorization: Basic {basic}"))
        env = _base_env(self.deadline, extra)
        with secrets.private_tempdir("pullboot-git-") as tmp:
            ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
                   "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=2"]
            ssh += self._host_key_options()
            key_ref = self.opt("ssh_key") if allowed else None
            if key_ref:
                key = Path(tmp, "deploy_key")
                key.touch(mode=0o600)
                material = secrets.resolve(key_ref, region=region, what="git.ssh_key")
                key.write_text(material if material.endswith("\n") else material + "\n")
                ssh += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
            env["GIT_SSH_COMMAND"] = shlex.join(ssh)
            yield env
        # The temp dir (and the key in it) is gone here, whatever happened.

    def _credentials_allowed(self) -> bool:
        """May the host's git.token / git.ssh_key go to this source's server?

        Only to a source the host chose itself, or to a server the host lists in
        ``git.credential_hosts``: a source from user-data must never receive the
        host's credentials. A token never travels over plain http.
        """
        if not (self.opt("token") or self.opt("ssh_key")):
            return False
        url = self.remote_url
        host = (urlsplit(url).hostname or "").lower()
        listed = {h.lower() for h in self.opt("credential_hosts") or []}
        if not (self.spec.options.get("source_from_host") or (host and host in listed)):
            log.warning("git credentials not sent to %s: the source did not come from this "
                        "host's own settings and its host is not in git.credential_hosts",
                        self.display_url)
            return False
        if self.opt("token") and urlsplit(url).scheme == "http" and not _loopback(host):
            raise AuthError(f"git.token would travel in clear text to {self.display_url}",
                            hint="use an https:// source; a token goes over plain http only "
                            "to this machine (loopback)")
        return True

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
            local = Deadline.after(_LOCAL_TIMEOUT_S, cancel=self.deadline.cancel)
            for key_file in self.opt("gpg_keys") or []:
                _run(["gpg", "--batch", "--quiet", "--import", "--", key_file], env, local)
            allowed = Path(home, "allowed_signers")
            allowed.write_text("".join(f'* namespaces="git" {s}\n' for s in signers
                                       if s.startswith(_SSH_KEY_PREFIXES)))
            proc = _run_bounded(
                ["git", "-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit",
                 "--raw", "--end-of-options", sha], cwd=self.repo_dir,
                env={**_base_env(local), **env}, deadline=local, what="git verify-commit")
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


def _run(cmd: list[str], env: dict[str, str], deadline: Deadline) -> None:
    proc = _run_bounded(cmd, env=env, deadline=deadline, what=cmd[0])
    if proc.returncode != 0:
        raise ConfigError(f"{cmd[0]} failed: {proc.stderr.strip()[-300:]}",
                          hint="check the key files in git.gpg_keys")


def _base_env(deadline: Deadline,
              extra: list[tuple[str, str]] | None = None) -> dict[str, str]:
    """Environment for git: no prompts, allowed transports, low-speed limits, ``extra`` config.

    Config goes through ``GIT_CONFIG_COUNT``/``KEY_n``/``VALUE_n``: it reaches
    this git process only, never a file.
    """
    low_time = int(max(1, min(_LOW_SPEED_TIME_S, deadline.left())))
    pairs = [("protocol.allow", "never"),
             *((f"protocol.{p}.allow", "always") for p in _ALLOWED_PROTOCOLS),
             ("http.lowSpeedLimit", str(_LOW_SPEED_LIMIT)), ("http.lowSpeedTime", str(low_time)),
             *(extra or [])]
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false",
           "GIT_CONFIG_COUNT": str(len(pairs))}
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def _run_bounded(cmd: list[str], *, env: dict[str, str], deadline: Deadline, what: str,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (an argv list, never a shell) in its own process group, within ``deadline``.

    When the deadline passes or the run is canceled, the whole group (git and
    its ssh or remote helpers) is killed and TransientSourceError raised: an
    unanswered server is unreachable, worth a retry or the last good release.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=min(_POLL_S, max(deadline.left(), 0.01)))
                return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                if deadline.done():
                    break
    finally:
        if proc.returncode is None:
            _kill_group(proc)
    why = "canceled by a signal" if deadline.canceled() else "did not finish within the " \
        "fetch deadline (fetch.retry_budget)"
    raise TransientSourceError(f"{what} {why}; git was stopped",
                               hint="check that the server answers; raise fetch.retry_budget "
                               "for a very large repository")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL ``proc``'s process group and reap it (its pipes are drained)."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):  # a child that left the group keeps a pipe
        proc.communicate(timeout=5)


def clear_stale_locks(git_dir: Path) -> list[Path]:
    """Remove every ``*.lock`` regular file under ``git_dir``; returns what was removed.

    Only for pullboot's private cache repos, called while pullboot holds the
    state dir's run lock and no git child of ours runs: any lock there was
    left by a git that was killed. Symlinks are never followed or removed.
    """
    removed: list[Path] = []
    if not git_dir.is_dir() or git_dir.is_symlink():
        return removed
    for root, _dirs, files in os.walk(git_dir, followlinks=False):
        for name in files:
            if not name.endswith(".lock"):
                continue
            path = Path(root, name)
            try:
                if stat.S_ISREG(path.lstat().st_mode):
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue
    for path in removed:
        log.warning("removed stale git lock %s (left by an interrupted git)", path)
    return removed


def git_words(stderr: str, fallback: str = "") -> str:
    """git's own relevant lines from ``stderr``: bounded, credentials redacted.

    Blank lines, ``hint:`` lines and the "make sure you have the correct access
    rights" boilerplate are dropped, repeated lines kept once; at most
    :data:`_MAX_LINES` lines of :data:`_MAX_LINE` characters. URLs lose any
    user:password (:func:`redact_url`) and an ``Authorization:`` value is
    masked, so the text is safe for logs and reports.
    """
    lines: list[str] = []
    for raw in (stderr or "").splitlines():
        line = raw.strip()
        if not line or line.lower().startswith(_NOISE) or line in lines:
            continue
        line = _URL_RE.sub(lambda m: redact_url(m.group(0)), line)
        line = _AUTH_HEADER_RE.sub(r"\1***", line)
        lines.append(line if len(line) <= _MAX_LINE else line[:_MAX_LINE] + "...")
        if len(lines) == _MAX_LINES:
            break
    return " / ".join(lines) or fallback


# (git's phrases, error class, what it means, the fix), in the order they are checked.
_KINDS: Final[tuple[tuple[tuple[str, ...], type[SourceError], str, str], ...]] = (
    (_HOST_KEY, HostKeyError, "the SSH host key is not trusted",
     "add the server's key to git.known_hosts (ssh-keyscan, checked by hand), or opt in to "
     "trust on first use with git.accept_new_host_key: true"),
    (_AUTH, AuthError, "access denied",
     "check the deploy key (git.ssh_key) or token (git.token) the instance uses, and that it "
     "may read this repository"),
    (_REPO_NOT_FOUND, SourceNotFoundError, "repository not found",
     "check the source URL; a private repository may also answer 'not found' to a key or "
     "token that may not read it"),
    (_REF_NOT_FOUND, SourceNotFoundError, "ref {ref!r} not found",
     "use an existing branch, tag or commit sha"),
    (_REFUSED, SourceError, "refused",
     "pullboot allows only the https, http, ssh, git and file transports (for submodules "
     "too)"),
)


def _classify(stderr: Any, fallback: str, url: str, ref: str) -> SourceError:
    """The error for a failed git command, by git's own words (all of stderr).

    Host key, auth, repository or ref not found, a refused transport: permanent
    (never retried, never the last good release). Only a network failure is
    transient. The message carries git's relevant lines (:func:`git_words`).
    """
    text = str(stderr or "")
    said = git_words(text, fallback)
    low = text.lower()
    for phrases, cls, what, hint in _KINDS:
        if any(p in low for p in phrases):
            return cls(f"git {url}: {what.format(ref=ref)} (git: {said})", hint=hint)
    if any(p in low for p in _TRANSIENT):
        return TransientSourceError(f"git {url} is unreachable (git: {said})",
                                    hint="check the network path and that the server is up")
    return SourceError(f"git fetch of {url} at {ref!r} failed (git: {said})",
                       hint="run the same git command by hand to see why")
