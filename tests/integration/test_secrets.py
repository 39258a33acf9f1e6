"""Secrets from SSM / Secrets Manager reach the play and nothing else.

A canary value is stored in moto, named in ``secret_vars``, and used by a
careless play (copied to a file, printed, put in a command line and in a
failure message). Afterwards no file under the state dir, no runner
artifact, no report, no events line and no line the CLI printed may hold it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Result, all_files, run_cli, web_tree
from tests.fakes.githttp import GitHttpServer

CANARY = "canary-7c1e9b2f-secret-not-on-disk"
SM_CANARY = "sm-canary-41d0a5e3-also-secret"

CARELESS_PLAY = """\
- name: careless
  hosts: all
  gather_facts: false
  tasks:
    - name: write the secret where the service wants it
      ansible.builtin.copy:
        dest: "{{ out_dir }}/secret.txt"
        content: "{{ db_password }}"
        mode: "0600"
    - name: write the JSON field too
      ansible.builtin.copy:
        dest: "{{ out_dir }}/user.txt"
        content: "{{ api_user }}"
        mode: "0600"
    - name: print it (nobody should, but plays do)
      ansible.builtin.debug:
        msg: "the password is {{ db_password }}"
    - name: pass it on a command line
      ansible.builtin.command: echo {{ db_password }}
      changed_when: false
    - name: hold still while the test looks at the disk
      ansible.builtin.wait_for:
        path: "{{ out_dir }}/go"
        timeout: 60
    - name: fail with it in the message
      ansible.builtin.fail:
        msg: "could not log in with {{ db_password }}"
"""


def _write_config(tmp_path: Path, settings: dict[str, Any]) -> None:
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump(settings))


def _leaks(root: Path, *values: str) -> list[Path]:
    found = []
    for path in all_files(root):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a file of the running play, gone meanwhile
            continue
        if any(v.encode() in data for v in values):
            found.append(path)
    return found


def _wait_for_task(runs: Path, task: str, proc: subprocess.Popen[str]) -> None:
    """Block until a runner_on_start event of ``task`` is in events.jsonl (a condition)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for path in runs.glob("*/events.jsonl"):
            for line in path.read_text().splitlines():
                if '"runner_on_start"' in line and task in line:
                    return
        time.sleep(0.05)
    raise AssertionError(f"task {task!r} did not start within 60s")


def test_secret_reaches_the_play_and_no_file_log_or_report(
        aws: Any, make_repo: Any, tmp_path: Path, state_dir: Path, out_dir: Path) -> None:
    aws.client("ssm").put_parameter(Name="/prod/db/password", Value=CANARY, Type="SecureString")
    aws.client("secretsmanager").create_secret(
        Name="prod/api", SecretString=json.dumps({"username": SM_CANARY, "other": 1}))
    _write_config(tmp_path, {"secret_vars": {"db_password": "ssm:/prod/db/password",
                                             "api_user": "secretsmanager:prod/api#username"}})
    repo = make_repo({"playbooks/web.yml": CARELESS_PLAY})

    proc = subprocess.Popen(
        [sys.executable, "-m", "pullboot", "run", "--source", repo.url, "--role", "web",
         "-e", f"out_dir={out_dir}", "--json", "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        _wait_for_task(state_dir / "runs", "hold still", proc)
        # Mid-play, after the secret was copied, printed and put on a command line.
        mid_run = _leaks(state_dir, CANARY, SM_CANARY)
    finally:
        (out_dir / "go").touch()
        out, err = proc.communicate(timeout=120)
    res = Result(proc.returncode, out, err)

    assert mid_run == []
    assert res.rc == 1, res.stderr  # the last task fails on purpose
    # It reached the play...
    assert (out_dir / "secret.txt").read_text() == CANARY
    assert (out_dir / "user.txt").read_text() == SM_CANARY
    report = res.report
    assert sorted(report["secrets"]) == ["api_user", "db_password"]
    assert report["failures"][0]["message"] == "could not log in with ********"
    assert "could not log in with ********" in res.stderr  # the live failure line
    events = Path(report["events_file"]).read_text()
    assert "the password is ********" in events
    # ...and nowhere else.
    assert CANARY not in res.stdout and CANARY not in res.stderr
    assert SM_CANARY not in res.stdout and SM_CANARY not in res.stderr
    files = all_files(state_dir)
    assert any(p.name == "command" for p in files), "expected ansible-runner artifacts"
    assert _leaks(state_dir, CANARY, SM_CANARY) == []
    # The play's raw output lived on a tmpfs scratch dir (gone now); the stdout
    # artifact came back redacted.
    artifact = state_dir / "runner" / "artifacts" / report["run_id"]
    assert (artifact / "job_events").is_symlink()
    assert not (artifact / "job_events").exists()
    assert not (artifact / "stdout").is_symlink()
    assert "the password is ********" in (artifact / "stdout").read_text()


def test_missing_secret_fails_before_anything_runs(aws: Any, make_repo: Any, tmp_path: Path,
                                                   state_dir: Path, out_dir: Path) -> None:
    _write_config(tmp_path, {"secret_vars": {"db_password": "ssm:/does/not/exist"}})
    repo = make_repo({"playbooks/web.yml": CARELESS_PLAY})
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json")
    assert res.rc == 2, res.stderr
    error = res.report["error"]
    assert error["stage"] == "secrets"
    assert "ssm:/does/not/exist" in error["message"] and "ParameterNotFound" in error["message"]
    assert not list((state_dir / "releases").iterdir()), "nothing should have been fetched"


def test_bad_secret_reference_is_a_config_error(make_repo: Any, tmp_path: Path) -> None:
    _write_config(tmp_path, {"secret_vars": {"db_password": "vault:/nope"}})
    repo = make_repo({"playbooks/web.yml": CARELESS_PLAY})
    res = run_cli("run", "--source", repo.url, "--role", "web", "--json")
    assert res.rc == 2
    assert "secret_vars.db_password" in res.report["error"]["message"]
    assert "ssm:NAME" in res.report["error"]["hint"]


VAULT_PLAY = """\
- name: vaulted
  hosts: all
  gather_facts: false
  vars_files:
    - ../vars/vaulted.yml
  tasks:
    - name: use the vaulted value
      ansible.builtin.copy:
        dest: "{{ out_dir }}/vaulted.txt"
        content: "{{ vaulted_value }}"
        mode: "0600"
"""


def test_vault_password_from_secrets_manager(aws: Any, make_repo: Any, tmp_path: Path,
                                             state_dir: Path, out_dir: Path) -> None:
    password = "vault-pass-5d2f8e61-never-on-disk"
    plain = tmp_path / "plain.yml"
    plain.write_text("vaulted_value: decrypted-fine\n")
    pw_file = tmp_path / "pw.txt"  # the test's own copy, outside the state dir
    pw_file.write_text(password + "\n")
    subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "encrypt",
                    "--vault-password-file", str(pw_file), str(plain)], check=True,
                   capture_output=True)
    aws.client("secretsmanager").create_secret(Name="prod/vault", SecretString=password)
    _write_config(tmp_path, {"vault_password": "secretsmanager:prod/vault"})
    repo = make_repo({"playbooks/web.yml": VAULT_PLAY, "vars/vaulted.yml": plain.read_text()})

    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json")

    assert res.rc == 0, res.stderr
    assert (out_dir / "vaulted.txt").read_text() == "decrypted-fine"
    assert res.report["secrets"] == ["(vault password)"]
    assert password not in res.stdout + res.stderr
    assert _leaks(state_dir, password) == []


# -- one parser for every secret reference (issue 11, item 4) --------------------------------


def test_git_token_reads_one_field_of_a_json_secret(aws: Any, make_repo: Any, tmp_path: Path,
                                                    state_dir: Path, out_dir: Path) -> None:
    token = "canary-token-field-3a9d7e21"
    repo = make_repo(web_tree())
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(served / "b.git")],
                   check=True)
    # A SecretId of "ci/git#token" would not exist: the field must be split off.
    aws.client("secretsmanager").create_secret(
        Name="ci/git", SecretString=json.dumps({"token": token, "user": "bot"}))
    _write_config(tmp_path, {"git": {"token": "secretsmanager:ci/git#token"}})
    with GitHttpServer(served, token=token) as server:
        res = run_cli("run", "--source", f"git+{server.url}/b.git", "--role", "web",
                      "-e", f"out_dir={out_dir}", "--json")
        assert res.rc == 0, res.stderr
        assert server.auth_headers and server.unauthorized == 0
    assert token not in res.stdout + res.stderr
    assert _leaks(state_dir, token) == []


def test_unreadable_git_token_is_a_secret_error_like_secret_vars(
        aws: Any, make_repo: Any, tmp_path: Path, state_dir: Path) -> None:
    aws.client("secretsmanager").create_secret(Name="ci/git", SecretString="not json")
    repo = make_repo(web_tree())
    for settings in ({"git": {"token": "secretsmanager:ci/git#token"}},
                     {"secret_vars": {"x": "secretsmanager:ci/git#token"}}):
        _write_config(tmp_path, settings)
        res = run_cli("run", "--source", repo.url, "--role", "web", "--json")
        assert res.rc == 2, res.stderr
        error = res.report["error"]
        assert (error["type"], error["stage"]) == ("SecretError", "secrets")
        assert "secretsmanager:ci/git#token" in error["message"]
        assert "field 'token'" in error["message"]
