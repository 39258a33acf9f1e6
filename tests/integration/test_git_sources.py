"""Git sources you can trust: last good on outage, signatures, tokens, change detection."""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import FAIL_PLAY, all_files, git, run_cli, web_tree
from tests.fakes.gitdaemon import GitDaemon, free_port
from tests.fakes.githttp import GitHttpServer


@pytest.fixture
def daemon(tmp_path: Path, git_daemon_at: Callable[[Path], GitDaemon]) -> GitDaemon:
    return git_daemon_at(tmp_path)


def _config(tmp_path: Path, **settings: Any) -> None:
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump(settings))


def test_git_server_down_runs_last_good(make_repo: Any, daemon: GitDaemon, tmp_path: Path,
                                        out_dir: Path) -> None:
    repo = make_repo(web_tree())
    url = daemon.url(repo.path.name)
    _config(tmp_path, fetch={"retry_budget": 1})
    args = ("run", "--source", url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    good = run_cli(*args)
    assert good.rc == 0, good.stderr
    daemon.stop()
    stale = run_cli(*args)
    assert stale.rc == 0, stale.stderr
    src = stale.report["source"]
    assert src["stale"] is True
    assert "unreachable" in src["stale_reason"]
    assert src["release"] == good.report["source"]["release"]
    assert src["revision"] == repo.head
    assert stale.report["status"] == "successful"

    _config(tmp_path, fetch={"retry_budget": 1}, on_source_failure="fail")
    failed = run_cli(*args)
    assert failed.rc == 4
    assert failed.report["error"]["type"] == "TransientSourceError"


def test_no_last_good_means_exit_4(tmp_path: Path) -> None:
    _config(tmp_path, fetch={"retry_budget": 0.5})
    res = run_cli("run", "--source", f"git://127.0.0.1:{free_port()}/nothing", "--role",
                  "web", "--json")
    assert res.rc == 4
    assert "no last good release" in res.report["error"]["hint"]


def test_unknown_ref_fails_fast_without_fallback(make_repo: Any, out_dir: Path) -> None:
    repo = make_repo(web_tree())
    ok = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}")
    assert ok.rc == 0
    res = run_cli("run", "--source", repo.url, "--ref", "no-such-branch", "--role", "web",
                  "--json")
    assert res.rc == 4
    assert "not found" in res.report["error"]["message"]
    assert res.report["source"]["stale"] is False


def test_force_pushed_ref_is_followed(make_repo: Any, tmp_path: Path, out_dir: Path) -> None:
    repo = make_repo(web_tree())
    first = run_cli("run", "--source", repo.url, "--role", "web", "-e",
                    f"out_dir={out_dir}", "--json")
    git(repo.path, "commit", "--amend", "-qm", "rewritten history")
    second = run_cli("run", "--source", repo.url, "--role", "web", "-e",
                     f"out_dir={out_dir}", "--json")
    assert second.rc == 0, second.stderr
    assert second.report["source"]["revision"] == repo.head
    assert second.report["source"]["revision"] != first.report["source"]["revision"]


def test_tag_and_sha_refs(make_repo: Any, out_dir: Path) -> None:
    repo = make_repo(web_tree())
    first = repo.head
    git(repo.path, "tag", "-a", "v1", "-m", "release 1")
    repo.commit({"playbooks/web.yml": FAIL_PLAY}, "break it")
    by_tag = run_cli("run", "--source", repo.url, "--ref", "v1", "--role", "web", "-e",
                     f"out_dir={out_dir}", "--json")
    assert by_tag.rc == 0, by_tag.stderr
    assert by_tag.report["source"]["revision"] == first
    by_sha = run_cli("run", "--source", repo.url, "--ref", first, "--role", "web", "-e",
                     f"out_dir={out_dir}", "--json")
    assert by_sha.rc == 0, by_sha.stderr
    assert by_sha.report["source"]["revision"] == first


# -- signatures ----------------------------------------------------------------


@pytest.fixture
def gpg_home(tmp_path: Path) -> Any:
    def make(name: str) -> tuple[dict[str, str], str, Path]:
        home = tmp_path / f"gnupg-{name}"
        home.mkdir(mode=0o700)
        env = {**os.environ, "GNUPGHOME": str(home)}
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                        f"{name} <{name}@example.invalid>", "ed25519", "sign", "never"],
                       env=env, check=True, capture_output=True)
        listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys"], env=env,
                                 check=True, capture_output=True, text=True).stdout
        fpr = next(line.split(":")[9] for line in listing.splitlines()
                   if line.startswith("fpr:"))
        pub = tmp_path / f"{name}.asc"
        pub.write_bytes(subprocess.run(["gpg", "--batch", "--armor", "--export", fpr],
                                       env=env, check=True, capture_output=True).stdout)
        return env, fpr, pub

    return make


def _signed_commit(repo: Any, env: dict[str, str], fpr: str, files: dict[str, str]) -> str:
    for rel, content in files.items():
        (repo.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo.path / rel).write_text(content)
    subprocess.run(["git", "add", "-A"], cwd=repo.path, check=True)
    subprocess.run(["git", "-c", f"user.signingkey={fpr}", "commit", "-S", "-qm", "signed"],
                   cwd=repo.path, env=env, check=True, capture_output=True)
    return str(repo.head)


def test_verify_commit(make_repo: Any, gpg_home: Any, tmp_path: Path, out_dir: Path,
                       state_dir: Path) -> None:
    env, fpr, pub = gpg_home("release")
    other_env, other_fpr, other_pub = gpg_home("stranger")
    repo = make_repo(web_tree())  # unsigned
    _config(tmp_path, git={"verify_commit": True, "allowed_signers": [fpr],
                           "gpg_keys": [str(pub), str(other_pub)]})
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    unsigned = run_cli(*args)
    assert unsigned.rc == 4
    assert unsigned.report["error"]["type"] == "IntegrityError"
    assert "not signed" in unsigned.report["error"]["message"]
    assert not list((state_dir / "releases").iterdir())

    sha = _signed_commit(repo, env, fpr, {"README": "signed\n"})
    signed = run_cli(*args)
    assert signed.rc == 0, signed.stderr
    assert signed.report["source"]["revision"] == sha

    _signed_commit(repo, other_env, other_fpr, {"README": "by a stranger\n"})
    stranger = run_cli(*args)
    assert stranger.rc == 4
    assert "not allowed" in stranger.report["error"]["message"]


def test_an_unsigned_commit_fetches_no_submodule_before_it_is_refused(
        make_repo: Any, gpg_home: Any, tmp_path: Path, state_dir: Path) -> None:
    # Verification comes before the checkout: an unsigned commit's .gitmodules must not make
    # git contact anything (it could send credentials there, or fetch a hostile tree).
    from tests.fakes.blackhole import Blackhole

    _env, fpr, pub = gpg_home("release")
    with Blackhole(lifetime_s=60) as hole:
        repo = make_repo({**web_tree(), ".gitmodules": (
            f'[submodule "evil"]\n\tpath = roles/evil\n'
            f"\turl = git://127.0.0.1:{hole.port}/evil.git\n")})
        # A real gitlink, so that `git submodule update` would clone from that URL.
        subprocess.run(["git", "update-index", "--add", "--cacheinfo",
                        f"160000,{'1' * 40},roles/evil"], cwd=repo.path, check=True)
        subprocess.run(["git", "commit", "-qm", "add a submodule"], cwd=repo.path, check=True)
        _config(tmp_path, git={"verify_commit": True, "allowed_signers": [fpr],
                               "gpg_keys": [str(pub)], "submodules": True},
                fetch={"retry_budget": 5})
        res = run_cli("run", "--source", repo.url, "--role", "web", "--json")
        assert res.rc == 4, res.stderr
        assert "not signed" in res.report["error"]["message"]
        assert hole.accepted == 0


# -- private repos over HTTPS ------------------------------------------------------


def test_https_token_from_ssm_never_lands_anywhere(make_repo: Any, aws: Any, tmp_path: Path,
                                                   state_dir: Path, out_dir: Path) -> None:
    token = "canary-token-9f8e7d6c5b4a"
    repo = make_repo(web_tree())
    bare = tmp_path / "served"
    bare.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(bare / "boot.git")],
                   check=True)
    aws.client("ssm").put_parameter(Name="/ci/git-token", Value=token, Type="SecureString")
    with GitHttpServer(bare, token=token) as server:
        url = f"git+{server.url}/boot.git"
        _config(tmp_path, git={"token": "ssm:/ci/git-token"})
        res = run_cli("run", "--source", url, "--role", "web", "-e", f"out_dir={out_dir}",
                      "--json", "-vv")
        assert res.rc == 0, res.stderr
        assert server.auth_headers, "the token was never sent"
        assert server.unauthorized == 0
        no_token = tmp_path / "no-token.yml"
        no_token.write_text("{}\n")
        denied = run_cli("run", "--config", str(no_token), "--source", url, "--role", "web",
                         "--json")
    assert res.report["source"]["revision"] == repo.head
    assert denied.rc == 4
    assert denied.report["error"]["type"] == "AuthError"
    for text in (res.stdout, res.stderr, denied.stdout, denied.stderr):
        assert token not in text
    leaked = [p for p in all_files(state_dir) if token.encode() in p.read_bytes()]
    assert leaked == []
    configs = list(state_dir.rglob(".git/config"))
    assert configs and all(token not in p.read_text() for p in configs)


# -- change detection --------------------------------------------------------------


FLAKY_PLAY = textwrap.dedent("""\
    - hosts: all
      gather_facts: false
      tasks:
        - name: fail while the flag exists
          ansible.builtin.fail:
            msg: flag present
          when: (out_dir ~ '/flag') is exists
        - name: mark
          ansible.builtin.copy: {dest: "{{ out_dir }}/ran", content: x, mode: "0644"}
""")


def test_only_if_changed(make_repo: Any, state_dir: Path, out_dir: Path) -> None:
    repo = make_repo({"playbooks/web.yml": FLAKY_PLAY})
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
            "--only-if-changed", "--json")
    first = run_cli(*args)
    assert first.rc == 0 and first.report["status"] == "successful", first.stderr
    artifacts = state_dir / "runner" / "artifacts"
    before = set(artifacts.iterdir())

    same = run_cli(*args)
    assert same.rc == 0, same.stderr
    assert same.report["status"] == "unchanged"
    assert same.report["events_file"] is None
    assert same.report["source"]["revision"] == repo.head
    assert set(artifacts.iterdir()) == before, "an ansible run was started"

    other_vars = run_cli(*args, "-e", "extra=1")
    assert other_vars.report["status"] == "successful"

    (out_dir / "flag").write_text("")
    failed = run_cli(*args)
    assert failed.rc == 1 and failed.report["status"] == "failed"
    (out_dir / "flag").unlink()
    retried = run_cli(*args)
    assert retried.report["status"] == "successful", "a failed run must be retried"

    repo.commit({"README": "new\n"})
    changed = run_cli(*args)
    assert changed.report["status"] == "successful"
    assert changed.report["source"]["revision"] == repo.head


def test_plan_says_whether_a_run_would_happen(make_repo: Any, out_dir: Path) -> None:
    repo = make_repo(web_tree())
    args = ("--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}")
    assert "no successful run recorded" in run_cli("plan", *args).stdout
    assert run_cli("run", *args).rc == 0
    plan = run_cli("plan", *args, "--json").report
    assert plan["current_release"] == plan["source"]["release"]
    assert "unchanged since the last successful run" in plan["reason"]
    repo.commit({"README": "x\n"})
    plan = run_cli("plan", *args, "--json").report
    assert plan["would_run"] is True
    assert "a new revision" in plan["reason"]


# -- galaxy requirements -------------------------------------------------------------


def _collection_tarball(tmp_path: Path) -> Path:
    src = tmp_path / "collection-src"
    (src / "plugins" / "filter").mkdir(parents=True)
    (src / "galaxy.yml").write_text(yaml.safe_dump({
        "namespace": "pullboot_test", "name": "demo", "version": "1.0.0",
        "readme": "README.md", "authors": ["t"]}))
    (src / "README.md").write_text("test collection\n")
    (src / "plugins" / "filter" / "shout.py").write_text(textwrap.dedent("""\
        class FilterModule:
            def filters(self):
                return {"shout": lambda s: str(s).upper() + "!"}
        """))
    out = tmp_path / "built"
    subprocess.run(["ansible-galaxy", "collection", "build", str(src), "--output-path",
                    str(out)], check=True, capture_output=True)
    return next(out.glob("*.tar.gz"))


def test_requirements_collection_from_the_tree(make_repo: Any, tmp_path: Path,
                                               out_dir: Path, state_dir: Path) -> None:
    tarball = _collection_tarball(tmp_path)
    play = textwrap.dedent("""\
        - hosts: all
          gather_facts: false
          tasks:
            - name: use the collection's filter
              ansible.builtin.copy:
                dest: "{{ out_dir }}/shout.txt"
                content: "{{ 'hello' | pullboot_test.demo.shout }}"
                mode: "0644"
        """)
    repo = make_repo({
        "playbooks/web.yml": play,
        "requirements.yml": yaml.safe_dump({"collections": [
            {"name": f"collections/{tarball.name}", "type": "file"}]}),
    })
    (repo.path / "collections").mkdir()
    (repo.path / "collections" / tarball.name).write_bytes(tarball.read_bytes())
    repo.commit({}, "add the tarball")
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    first = run_cli(*args)
    assert first.rc == 0, first.stderr
    assert (out_dir / "shout.txt").read_text() == "HELLO!"
    assert "installed galaxy requirements" in first.stderr
    release = state_dir / "releases" / first.report["source"]["release"]
    assert (release / ".pullboot" / "collections" / "ansible_collections" / "pullboot_test"
            / "demo").is_dir()

    repo.commit({"README": "new revision, same requirements\n"})
    second = run_cli(*args)
    assert second.rc == 0, second.stderr
    assert second.report["source"]["revision"] != first.report["source"]["revision"]
    assert "installed galaxy requirements" not in second.stderr
    assert "unchanged (cached" in second.stderr


def test_branch_pinned_git_role_requirement_follows_the_branch(make_repo: Any, tmp_path: Path,
                                                               out_dir: Path) -> None:
    def role(text: str) -> dict[str, str]:
        return {"meta/main.yml": "galaxy_info: {author: t, description: t, license: MIT, "
                                 "min_ansible_version: '2.9'}\n",
                "tasks/main.yml": textwrap.dedent(f"""\
                    - name: mark the role version
                      ansible.builtin.copy:
                        dest: "{{{{ out_dir }}}}/role.txt"
                        content: {text}
                        mode: "0644"
                    """)}

    role_repo = make_repo(role("v1"))
    play = "- hosts: all\n  gather_facts: false\n  roles: [myrole]\n"
    repo = make_repo({"playbooks/web.yml": play, "requirements.yml": yaml.safe_dump({
        "roles": [{"src": f"git+file://{role_repo.path}", "version": "main",
                   "name": "myrole"}]})})
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    first = run_cli(*args)
    assert first.rc == 0, first.stderr
    assert (out_dir / "role.txt").read_text() == "v1"

    role_repo.commit(role("v2"))  # the branch moves; the tree does not
    second = run_cli(*args)
    assert second.rc == 0, second.stderr
    assert second.report["source"]["revision"] == first.report["source"]["revision"]
    assert "resolve to new commits" in second.stderr
    assert (out_dir / "role.txt").read_text() == "v2"

    third = run_cli(*args)  # nothing moved: no new install
    assert third.rc == 0, third.stderr
    assert "installed galaxy requirements" not in third.stderr

    role_repo.path.rename(tmp_path / "role-gone")  # offline: keep what we have, say so
    (out_dir / "role.txt").unlink()
    fourth = run_cli(*args)
    assert fourth.rc == 0, fourth.stderr
    assert "could not be checked for updates; using the cached install" in fourth.stderr
    assert (out_dir / "role.txt").read_text() == "v2"


def test_galaxy_installs_join_the_trees_own_roles_and_collections_paths(
        make_repo: Any, tmp_path: Path, out_dir: Path) -> None:
    # pullboot's ANSIBLE_ROLES_PATH / ANSIBLE_COLLECTIONS_PATH override ansible.cfg, so they
    # must carry the tree's roles_path / collections_path besides the galaxy installs.
    tarball = _collection_tarball(tmp_path)
    role_repo = make_repo({
        "meta/main.yml": "galaxy_info: {author: t, description: t, license: MIT, "
                         "min_ansible_version: '2.9'}\n",
        "tasks/main.yml": "- name: from galaxy\n  ansible.builtin.debug: {msg: galaxy}\n"})
    play = textwrap.dedent("""\
        - hosts: all
          gather_facts: false
          roles: [localrole, myrole]
          tasks:
            - name: use both collections
              ansible.builtin.copy:
                dest: "{{ out_dir }}/both.txt"
                content: "{{ 'a' | pullboot_test.demo.shout }} {{ 'B' | pullboot_test.mine.low }}"
                mode: "0644"
        """)
    repo = make_repo({
        "playbooks/web.yml": play,
        "ansible.cfg": "[defaults]\nroles_path = myroles\ncollections_path = ./colls\n",
        "myroles/localrole/tasks/main.yml": "- name: local\n  ansible.builtin.debug: {msg: x}\n",
        "colls/ansible_collections/pullboot_test/mine/plugins/filter/low.py":
            "class FilterModule:\n    def filters(self):\n"
            "        return {'low': lambda s: str(s).lower()}\n",
        "requirements.yml": yaml.safe_dump({
            "collections": [{"name": f"collections/{tarball.name}", "type": "file"}],
            "roles": [{"src": f"git+file://{role_repo.path}", "version": "main",
                       "name": "myrole"}]}),
    })
    (repo.path / "collections").mkdir()
    (repo.path / "collections" / tarball.name).write_bytes(tarball.read_bytes())
    repo.commit({}, "add the tarball")
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json")
    assert res.rc == 0, res.stderr
    assert (out_dir / "both.txt").read_text() == "A! b"
