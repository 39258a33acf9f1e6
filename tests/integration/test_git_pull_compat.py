"""Git as ansible-pull users expect it (issue 13): git's own words on failure, short shas,
submodules, a release that refuses local edits and is a git checkout.

Real git through the CLI, over file://, ``git daemon`` and ``git http-backend`` on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import git, run_cli, web_tree
from tests.fakes.gitdaemon import GitDaemon
from tests.fakes.githttp import GitHttpServer

# Generous: a permanent failure must not wait for the retry budget (60 s here).
BUDGET_S = 60
FAST_S = BUDGET_S / 3


def _config(tmp_path: Path, **settings: Any) -> None:
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump(settings))


@pytest.fixture
def served(tmp_path: Path, git_daemon_at: Callable[[Path], GitDaemon]) -> GitDaemon:
    return git_daemon_at(tmp_path / "served")


def _good_run_then(args: tuple[str, ...], repo: Any, out_dir: Path) -> Any:
    """A good run (so a last good release exists), then ``args``; returns (result, seconds)."""
    ok = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}")
    assert ok.rc == 0, ok.stderr
    started = time.monotonic()
    res = run_cli(*args)
    return res, time.monotonic() - started


# -- item 10: git's failures classified, in git's own words ------------------------------


def test_a_path_that_is_not_a_repo_is_not_found_not_an_outage(
        make_repo: Any, tmp_path: Path, out_dir: Path) -> None:
    _config(tmp_path, fetch={"retry_budget": BUDGET_S})
    plain = tmp_path / "plain.git"
    plain.mkdir()
    res, took = _good_run_then(("run", "--source", f"git+file://{plain}", "--role", "web",
                                "--json"), make_repo(web_tree()), out_dir)
    assert res.rc == 4, res.stderr
    err = res.report["error"]
    assert err["type"] == "SourceNotFoundError"
    assert "does not appear to be a git repository" in err["message"]
    assert "repository not found" in err["message"]
    assert res.report["source"]["stale"] is False, "a missing repo is not an outage"
    assert took < FAST_S, f"retried a permanent failure for {took:.1f}s"
    assert "does not appear to be a git repository" in res.stderr


def test_git_daemon_without_the_repo_is_not_found(make_repo: Any, served: GitDaemon,
                                                  tmp_path: Path, out_dir: Path) -> None:
    _config(tmp_path, fetch={"retry_budget": BUDGET_S})
    res, took = _good_run_then(("run", "--source", served.url("nothere.git"), "--role", "web",
                                "--json"), make_repo(web_tree()), out_dir)
    assert res.rc == 4, res.stderr
    assert res.report["error"]["type"] == "SourceNotFoundError"
    assert "repository not exported" in res.report["error"]["message"]
    assert res.report["source"]["stale"] is False
    assert took < FAST_S


def test_http_auth_failure_says_why_and_never_shows_the_password(
        make_repo: Any, tmp_path: Path) -> None:
    repo = make_repo(web_tree())
    bare = tmp_path / "http"
    bare.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(bare / "boot.git")],
                   check=True)
    with GitHttpServer(bare, token="right-token") as server:
        no_creds = run_cli("run", "--source", f"git+{server.url}/boot.git", "--role", "web",
                           "--json")
        wrong_url = server.url.replace("http://", "http://u:canary-pw-5e6f@")
        wrong = run_cli("run", "--source", f"git+{wrong_url}/boot.git", "--role", "web",
                        "--json")
    assert no_creds.rc == 4 and wrong.rc == 4
    assert no_creds.report["error"]["type"] == "AuthError"
    assert "could not read Username" in no_creds.report["error"]["message"]
    assert wrong.report["error"]["type"] == "AuthError"
    # The URL's password travels as a scoped Authorization header (never in git's config),
    # so git reports the refusal as its own prompt failing.
    assert any(words in wrong.report["error"]["message"]
               for words in ("Authentication failed", "could not read Username"))
    assert [line for line in wrong.stderr.splitlines() if "access denied" in line]
    # Nowhere: not git's words, not the log's `setting source = ...`, not the report.
    assert "canary-pw-5e6f" not in wrong.stdout + wrong.stderr


def test_unreachable_server_is_still_an_outage(tmp_path: Path) -> None:
    from tests.fakes.gitdaemon import free_port

    _config(tmp_path, fetch={"retry_budget": 0.5})
    res = run_cli("run", "--source", f"git://127.0.0.1:{free_port()}/x.git", "--role", "web",
                  "--json")
    assert res.rc == 4
    assert res.report["error"]["type"] == "TransientSourceError"
    assert "Connection refused" in res.report["error"]["message"]


# ssh's and git's exact words, from real runs of OpenSSH 9 / git 2.39 against servers that
# refused us (no sshd on the test machine: classified at the function level).
SSH_HOST_KEY = textwrap.dedent("""\
    No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.
    Host key verification failed.
    fatal: Could not read from remote repository.

    Please make sure you have the correct access rights
    and the repository exists.
    """)
SSH_CHANGED = textwrap.dedent("""\
    @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
    @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
    @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
    Host key verification failed.
    fatal: Could not read from remote repository.
    """)
SSH_DENIED = textwrap.dedent("""\
    git@127.0.0.1: Permission denied (publickey).
    fatal: Could not read from remote repository.

    Please make sure you have the correct access rights
    and the repository exists.
    """)
SSH_ADDED_THEN_DENIED = (
    "Warning: Permanently added the ED25519 host key for IP address '127.0.0.1' to the list "
    "of known hosts.\ngit@127.0.0.1: Permission denied (publickey).\n"
    "fatal: Could not read from remote repository.\n")
GITHUB_NOT_FOUND = textwrap.dedent("""\
    ERROR: Repository not found.
    fatal: Could not read from remote repository.

    Please make sure you have the correct access rights
    and the repository exists.
    """)


@pytest.mark.parametrize(("stderr", "kind", "words"), [
    (SSH_HOST_KEY, "HostKeyError", "Host key verification failed."),
    (SSH_CHANGED, "HostKeyError", "REMOTE HOST IDENTIFICATION HAS CHANGED"),
    (SSH_DENIED, "AuthError", "Permission denied (publickey)."),
    (SSH_ADDED_THEN_DENIED, "AuthError", "Permission denied (publickey)."),
    (GITHUB_NOT_FOUND, "SourceNotFoundError", "ERROR: Repository not found."),
    ("ssh: connect to host 127.0.0.1 port 22: Connection refused\n"
     "fatal: Could not read from remote repository.\n", "TransientSourceError",
     "Connection refused"),
], ids=["host-key-unknown", "host-key-changed", "publickey", "tofu-then-publickey",
        "repo-not-found", "refused"])
def test_ssh_failures_are_classified_by_gits_words(stderr: str, kind: str, words: str) -> None:
    from pullboot.sources.git import _classify

    err = _classify(stderr, "git fetch exited 128", "git+ssh://git@127.0.0.1/r.git", "main")
    assert type(err).__name__ == kind
    assert words in err.message
    assert "correct access rights" not in err.message  # git's boilerplate is dropped


def test_git_words_are_bounded_and_redacted() -> None:
    from pullboot.sources.git import git_words

    noisy = "".join(f"fatal: line {i} https://u:tok3n@h/r.git\n" for i in range(50))
    said = git_words(noisy + "Authorization: Basic c2VjcmV0\n" + "x" * 5000)
    assert "tok3n" not in said and "c2VjcmV0" not in said
    assert said.count("fatal:") == 6
    assert len(said) < 6 * 320


# -- item 11: short shas, as ansible-pull's -C takes them --------------------------------


@pytest.fixture
def daemon(tmp_path: Path, git_daemon_at: Callable[[Path], GitDaemon]) -> GitDaemon:
    return git_daemon_at(tmp_path)


@pytest.mark.parametrize("transport", ["file", "git-daemon"])
def test_a_short_sha_ref_runs_that_commit(transport: str, make_repo: Any, daemon: GitDaemon,
                                          out_dir: Path) -> None:
    repo = make_repo(web_tree())
    first = repo.head
    repo.commit({"README": "second\n"})
    git(repo.path, "branch", "side")
    repo.commit({"README": "third\n"})
    url = repo.url if transport == "file" else daemon.url(repo.path.name)
    args = ("run", "--source", url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    latest = run_cli(*args)  # a shallow cache first: the short sha is not in it
    assert latest.rc == 0, latest.stderr
    res = run_cli(*args[:3], "--ref", first[:7], *args[3:])
    assert res.rc == 0, res.stderr
    assert res.report["source"]["revision"] == first
    assert (out_dir / "web.txt").exists()
    plan = run_cli("plan", "--source", url, "--ref", first[:10], "--role", "web", "--json")
    assert plan.rc == 0, plan.stderr
    assert plan.report["source"]["revision"] == first


def test_an_unknown_short_sha_is_not_found(make_repo: Any) -> None:
    repo = make_repo(web_tree())
    ref = "0000000" if not repo.head.startswith("0000000") else "1111111"
    res = run_cli("run", "--source", repo.url, "--ref", ref, "--role", "web", "--json")
    assert res.rc == 4, res.stderr
    assert res.report["error"]["type"] == "SourceNotFoundError"
    assert f"ref '{ref}' not found" in res.report["error"]["message"]


# -- item 5: submodules checked out by default ---------------------------------------------


ROLE_PLAY = textwrap.dedent("""\
    - hosts: all
      gather_facts: false
      roles: [sub]
    """)


def _superproject(make_repo: Any, sub_url: str) -> Any:
    top = make_repo({"playbooks/web.yml": ROLE_PLAY, "roles/.keep": ""})
    subprocess.run(["git", "-c", "protocol.file.allow=always", "-c", "protocol.ext.allow=always",
                    "submodule", "add", "-q", sub_url, "roles/sub"], cwd=top.path, check=False,
                   capture_output=True)
    top.commit({}, "add the submodule")
    return top


def _role_repo(make_repo: Any) -> Any:
    return make_repo({"tasks/main.yml": textwrap.dedent("""\
        - name: the submodule role ran
          ansible.builtin.copy: {dest: "{{ out_dir }}/sub.txt", content: sub, mode: "0644"}
        """)})


def test_submodules_are_checked_out_by_default(make_repo: Any, tmp_path: Path,
                                               out_dir: Path) -> None:
    top = _superproject(make_repo, f"file://{_role_repo(make_repo).path}")
    args = ("run", "--source", top.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    res = run_cli(*args)
    assert res.rc == 0, res.stderr
    assert (out_dir / "sub.txt").read_text() == "sub"
    assert not any("submodules" in w for w in res.report["warnings"])


def test_submodules_off_warns_in_the_report_and_log(make_repo: Any, tmp_path: Path,
                                                    out_dir: Path) -> None:
    top = _superproject(make_repo, f"file://{_role_repo(make_repo).path}")
    _config(tmp_path, git={"submodules": False})
    res = run_cli("run", "--source", top.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json")
    assert not (out_dir / "sub.txt").exists()
    assert any("git.submodules is off" in w for w in res.report["warnings"]), res.report
    assert "git.submodules is off" in res.stderr


def test_a_submodule_with_an_ext_url_is_refused(make_repo: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    top = make_repo({"playbooks/web.yml": ROLE_PLAY})
    (top.path / ".gitmodules").write_text(
        f'[submodule "sub"]\n\tpath = roles/sub\n\turl = ext::sh -c touch% {marker}\n')
    sub = _role_repo(make_repo)
    git(top.path, "update-index", "--add", "--cacheinfo", f"160000,{sub.head},roles/sub")
    git(top.path, "add", ".gitmodules")
    git(top.path, "commit", "-qm", "a submodule whose URL is a command")
    res = run_cli("run", "--source", top.url, "--role", "web", "--json")
    assert not marker.exists(), "a submodule URL ran a command"
    assert res.rc == 4, res.stderr
    assert "transport 'ext' not allowed" in res.report["error"]["message"]


# -- item 6: a release edited on the host is never run -------------------------------------


def test_a_modified_release_is_rebuilt_and_the_original_runs(
        make_repo: Any, tmp_path: Path, out_dir: Path, state_dir: Path) -> None:
    from tests.conftest import FAIL_PLAY

    repo = make_repo(web_tree())
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    first = run_cli(*args)
    assert first.rc == 0, first.stderr
    release = state_dir / "releases" / first.report["source"]["release"]
    again = run_cli(*args)  # unmodified: reused, no warning (ansible leaves nothing behind)
    assert again.rc == 0, again.stderr
    assert not any("differs" in w for w in again.report["warnings"]), again.report["warnings"]
    assert "not exported again" in again.stderr

    (release / "playbooks" / "web.yml").write_text(FAIL_PLAY)
    edited = run_cli(*args)
    assert edited.rc == 0, edited.stderr  # the fetched play ran, not the edit
    assert edited.report["source"]["release"] == first.report["source"]["release"]
    assert any("playbooks/web.yml was changed" in w and "rebuilt" in w
               for w in edited.report["warnings"]), edited.report["warnings"]
    assert "differs from what was fetched" in edited.stderr
    assert "broken" not in (release / "playbooks" / "web.yml").read_text()
    assert not list((state_dir / "releases").glob(".staging-*"))


def test_a_modified_last_good_release_is_refused_when_the_source_is_down(
        make_repo: Any, daemon: GitDaemon, tmp_path: Path, out_dir: Path,
        state_dir: Path) -> None:
    repo = make_repo(web_tree())
    _config(tmp_path, fetch={"retry_budget": 0.5})
    args = ("run", "--source", daemon.url(repo.path.name), "--role", "web", "-e",
            f"out_dir={out_dir}", "--json")
    first = run_cli(*args)
    assert first.rc == 0, first.stderr
    release = state_dir / "releases" / first.report["source"]["release"]
    (release / "playbooks" / "web.yml").write_text("- hosts: all\n  tasks:\n"
                                                   "    - ansible.builtin.file: {path: "
                                                   f"'{out_dir}/edited', state: touch}}\n")
    daemon.stop()
    down = run_cli(*args)
    assert down.rc == 4, down.stderr
    assert not (out_dir / "edited").exists(), "the edited release ran"
    err = down.report["error"]
    assert err["type"] == "IntegrityError"
    assert "playbooks/web.yml was changed" in err["message"]
    assert "last good release" in err["message"]


# -- item 9: the release is a git checkout at the fetched commit ---------------------------


STAMP_PLAY = textwrap.dedent("""\
    - hosts: all
      gather_facts: false
      tasks:
        - name: stamp the deployed revision
          ansible.builtin.command: git rev-parse HEAD
          args: {chdir: "{{ playbook_dir }}/.."}
          register: rev
          changed_when: false
        - name: keep it
          ansible.builtin.copy: {dest: "{{ out_dir }}/rev.txt", content: "{{ rev.stdout }}",
                                 mode: "0644"}
    """)


def test_git_rev_parse_head_in_the_release_gives_the_revision(
        make_repo: Any, tmp_path: Path, out_dir: Path, state_dir: Path) -> None:
    repo = make_repo({"playbooks/web.yml": STAMP_PLAY})
    repo.commit({"README": "second\n"})
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    res = run_cli(*args)
    assert res.rc == 0, res.stderr
    assert (out_dir / "rev.txt").read_text() == repo.head
    release = state_dir / "releases" / res.report["source"]["release"]
    assert git(release, "status", "--porcelain") == ""
    assert not (release / ".git" / "config").read_text().count("[remote")
    again = run_cli(*args)  # .git/index & co. are not part of the manifest: reused as is
    assert again.rc == 0, again.stderr
    assert not any("differs" in w for w in again.report["warnings"])


def test_a_modified_dir_source_release_is_rebuilt_too(tmp_path: Path, out_dir: Path,
                                                      state_dir: Path) -> None:
    # The manifest is the state dir's, not git's: every source kind gets the same check.
    from tests.conftest import FAIL_PLAY, write_tree

    src = tmp_path / "tree"
    write_tree(src, web_tree())
    args = ("run", "--source", str(src), "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    first = run_cli(*args)
    assert first.rc == 0, first.stderr
    release = state_dir / "releases" / first.report["source"]["release"]
    (release / "playbooks" / "web.yml").write_text(FAIL_PLAY)
    edited = run_cli(*args)
    assert edited.rc == 0, edited.stderr
    assert any("playbooks/web.yml was changed" in w for w in edited.report["warnings"])
