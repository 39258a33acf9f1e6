"""`-e` as ansible reads it, and local vault passwords, via the CLI (issue 13 items 7, 8)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import all_files, run_cli

VARS_PLAY = """\
- name: vars
  hosts: all
  gather_facts: false
  tasks:
    - name: write the vars the play sees
      ansible.builtin.copy:
        dest: "{{ out_dir }}/vars.json"
        content: "{{ {'a': a, 'b': b, 'msg': msg, 'n': n, 'f': f} | to_json }}"
        mode: "0600"
"""


def test_extra_vars_forms_reach_the_play(make_repo: Any, out_dir: Path, tmp_path: Path) -> None:
    repo = make_repo({"playbooks/web.yml": VARS_PLAY})
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text("f: from-file\n")
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "-e", "a=1 b=2", "-e", "msg='hello world'", "-e", '{"n": [1, 2]}',
                  "-e", f"@{vars_file}", "--json")
    assert res.rc == 0, res.stderr
    seen = json.loads((out_dir / "vars.json").read_text())
    assert seen == {"a": "1", "b": "2", "msg": "hello world", "n": [1, 2], "f": "from-file"}


def test_extra_vars_junk_word_is_a_usage_error(make_repo: Any) -> None:
    repo = make_repo({"playbooks/web.yml": VARS_PLAY})
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", "a=1 junk")
    assert res.rc == 2
    assert "'junk' is not KEY=VALUE" in res.stderr and "Traceback" not in res.stderr


# -- local vault password files (item 8) ----------------------------------------------------

VAULT_PW = "canary-vaultpw-7d1e93b2"
VAULTED_VALUE = "decrypted-4f0c2a"


def _vault_play(pw_file: Path) -> str:
    # The last task prints the password itself, as a careless play might: it must be redacted.
    return f"""\
- name: vault
  hosts: all
  gather_facts: false
  vars_files: [../vars/secret.yml]
  tasks:
    - name: use the vaulted value
      ansible.builtin.copy:
        dest: "{{{{ out_dir }}}}/vaulted.txt"
        content: "{{{{ db_password }}}}"
        mode: "0600"
    - name: a play that prints the password
      ansible.builtin.debug:
        msg: "password {{{{ lookup('file', '{pw_file}') }}}}"
"""


def _vault_repo(make_repo: Any, tmp_path: Path, label: str | None = None) -> tuple[Any, Path]:
    pw_file = tmp_path / "outside" / "vault-pw"
    pw_file.parent.mkdir(exist_ok=True)
    pw_file.write_text(VAULT_PW + "\n")
    pw_file.chmod(0o600)
    plain = tmp_path / "outside" / "secret.yml"
    plain.write_text(f"db_password: {VAULTED_VALUE}\n")
    vault_id = f"{label}@{pw_file}" if label else str(pw_file)
    subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "encrypt",
                    "--vault-id", vault_id, str(plain)], check=True, capture_output=True,
                   timeout=60)
    repo = make_repo({"playbooks/web.yml": _vault_play(pw_file), "vars/secret.yml":
                      plain.read_text()})
    return repo, pw_file


def _assert_no_password_on_disk(res: Any, state_dir: Path) -> None:
    assert VAULT_PW not in res.stdout + res.stderr
    leaked = [p for p in all_files(state_dir) if VAULT_PW.encode() in p.read_bytes()]
    assert leaked == []


def test_vault_password_file_decrypts_and_is_written_nowhere(
        make_repo: Any, out_dir: Path, tmp_path: Path, state_dir: Path) -> None:
    repo, pw_file = _vault_repo(make_repo, tmp_path)
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--vault-password-file", str(pw_file), "--json")
    assert res.rc == 0, res.stderr
    assert (out_dir / "vaulted.txt").read_text() == VAULTED_VALUE
    assert "(vault password file)" in res.report["secrets"]
    _assert_no_password_on_disk(res, state_dir)
    events = (Path(res.report["events_file"])).read_text()
    assert "password ********" in events


def test_vault_id_with_label_and_the_setting(
        make_repo: Any, out_dir: Path, tmp_path: Path, state_dir: Path) -> None:
    repo, pw_file = _vault_repo(make_repo, tmp_path, label="prod")
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--vault-id", f"prod@{pw_file}", "--json")
    assert res.rc == 0, res.stderr
    (out_dir / "vaulted.txt").unlink()
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump({"vault_ids": [f"prod@{pw_file}"]}))
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json")
    assert res.rc == 0, res.stderr
    assert (out_dir / "vaulted.txt").read_text() == VAULTED_VALUE
    _assert_no_password_on_disk(res, state_dir)


def test_vault_without_password_fails_with_ansible_reason(
        make_repo: Any, out_dir: Path, tmp_path: Path, state_dir: Path) -> None:
    repo, _ = _vault_repo(make_repo, tmp_path)
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json")
    assert res.rc == 1
    error = res.report["error"]
    assert error["stage"] == "play" and "vault" in error["message"]
    assert error["origin"].startswith("vars/secret.yml")
    assert "--vault-password-file" in error["hint"]
    assert not (out_dir / "vaulted.txt").exists()


@pytest.mark.parametrize(("args", "match"), [
    (["--vault-password-file", "/nonexistent/pw"], "No such file"),
    (["--vault-id", "bad label@/x"], "bad label"),
    (["--vault-id", "prod@prompt"], "cannot prompt"),
])
def test_bad_vault_password_file_is_a_clear_error(
        make_repo: Any, args: list[str], match: str) -> None:
    repo = make_repo({"playbooks/web.yml": VARS_PLAY})
    res = run_cli("run", "--source", repo.url, "--role", "web", *args, "--json")
    assert res.rc == 2, res.stderr
    assert match in res.report["error"]["message"] and "Traceback" not in res.stderr
    # Checked before the fetch: nothing fetched, no release switched.
    assert res.report["source"]["revision"] is None and res.report["event_count"] == 0
