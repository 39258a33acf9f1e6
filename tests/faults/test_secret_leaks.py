"""Secrets never on disk, in any encoding, in any place ansible or the kernel writes.

Each test stores a canary in moto (SSM or Secrets Manager), names it in
``secret_vars`` and runs a real play through the CLI that prints it or puts
it where ansible keeps things. Then every file under the test's tmp dir
(state dir, HOME, the tree's own paths) and every printed line is searched
for the canary in every form ansible's output can give it: raw, with the
pty's CRLF, JSON-escaped once and twice, Python repr, each line of a
multi-line value, and (for truncation) its first characters.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Result, all_files, run_cli, web_tree
from tests.integration.test_secrets import _wait_for_task

PEM = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
       "b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0canaryPEM1\n"
       "QyNTUxOQAAACBnb3Qtbm8tc2VjcmV0cy1oZXJlLWp1c3QtYS1jYW5hcnkxMjM0\n"
       "-----END OPENSSH PRIVATE KEY-----\n")
SECRETS = {
    "pem": PEM,
    "quote": 'canary-q"uo"te-8d1e4c',
    "backslash": "canary-back\\slash\\7a2b9f",
    "single-quote": "canary-it's-0c4d8e21",
    "non-ascii": "canary-pässwörd-5f3e1a",
}

PRINTING_PLAY = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: print it
      ansible.builtin.debug:
        msg: "the key is {{ secret }}"
    - name: print the variable
      ansible.builtin.debug:
        var: secret
    - name: print it inside a list (Python repr in the text)
      ansible.builtin.debug:
        msg: "as text: {{ [secret] }}"
    - name: fail with it
      ansible.builtin.fail:
        msg: "{{ secret }}"
"""


def forms(value: str) -> dict[str, str]:
    """The forms of ``value`` to search for, by name (the test's own list)."""
    found = {"raw": value, "crlf": value.replace("\n", "\r\n"),
             "json": json.dumps(value, ensure_ascii=False)[1:-1],
             "json-ascii": json.dumps(value)[1:-1],
             "json-crlf": json.dumps(value.replace("\n", "\r\n"))[1:-1],
             "json-json": json.dumps(json.dumps(value, ensure_ascii=False)[1:-1],
                                     ensure_ascii=False)[1:-1],
             "json-json-crlf": json.dumps(json.dumps(value.replace("\n", "\r\n"))[1:-1])[1:-1],
             "repr": repr(value)[1:-1], "json-repr": json.dumps(repr(value)[1:-1])[1:-1]}
    for i, line in enumerate(value.splitlines()):
        if len(line) >= 8 and not line.startswith("-----"):
            found[f"line {i}"] = line
    return found


def leaks(root: Path, value: str, *texts: str) -> list[str]:
    """Every (place, form) holding ``value`` under ``root`` or in ``texts``."""
    wanted = {name: form.encode() for name, form in forms(value).items()}
    found = [f"printed: {name}" for text in texts for name, form in forms(value).items()
             if form in text]
    for path in all_files(root):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a file of the running play, gone meanwhile
            continue
        found += [f"{path.relative_to(root)}: {name}" for name, form in wanted.items()
                  if form in data]
    return found


def _store(aws: Any, value: str, *, where: str = "ssm") -> str:
    if where == "ssm":
        aws.client("ssm").put_parameter(Name="/leak/secret", Value=value, Type="SecureString")
        return "ssm:/leak/secret"
    aws.client("secretsmanager").create_secret(
        Name="leak/secret", SecretString=json.dumps({"value": value}))
    return "secretsmanager:leak/secret#value"


def _config(tmp_path: Path, ref: str) -> None:
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump({"secret_vars": {"secret": ref}}))


@pytest.mark.parametrize("name", [*SECRETS, "pem-yaml-output"])
def test_printed_secret_is_redacted_in_every_encoding(name: str, aws: Any, make_repo: Any,
                                                      tmp_path: Path) -> None:
    value = SECRETS.get(name, PEM)
    _config(tmp_path, _store(aws, value, where="sm" if name == "quote" else "ssm"))
    tree = {"playbooks/web.yml": PRINTING_PLAY}
    if name == "pem-yaml-output":  # multi-line values shown as YAML blocks, line by line
        tree["ansible.cfg"] = "[defaults]\ncallback_result_format = yaml\n"
    repo = make_repo(tree)

    res = run_cli("run", "--source", repo.url, "--role", "web", "--json", "-v")

    assert res.rc == 1, res.stderr  # the last task fails on purpose
    assert res.report["failures"][0]["message"] == "********"
    events = Path(res.report["events_file"]).read_text()
    assert "the key is ********" in events
    assert leaks(tmp_path, value, res.stdout, res.stderr) == []


def test_secret_cut_by_truncation_leaves_no_prefix(aws: Any, make_repo: Any,
                                                   tmp_path: Path) -> None:
    value = "canary-trunc-6b0d2e9f4a1c"
    _config(tmp_path, _store(aws, value))
    # The report keeps 2000 characters of a failure message: the secret is cut.
    play = PRINTING_PLAY.replace('msg: "{{ secret }}"', 'msg: "{{ \'x\' * 1990 }}{{ secret }}"')
    repo = make_repo({"playbooks/web.yml": play})

    res = run_cli("run", "--source", repo.url, "--role", "web", "--json")

    assert res.rc == 1, res.stderr
    message = res.report["failures"][0]["message"]
    # Redacted before it is cut (cut first, "canary-tru..." would survive).
    assert message.endswith("x********"), message[-40:]
    assert leaks(tmp_path, value[:8], res.stdout, res.stderr) == []


HOLDING_PLAY = """\
- hosts: all
  gather_facts: false
  tasks:
{task}
    - name: hold still while the test looks at the disk
      ansible.builtin.wait_for:
        path: "{{{{ out_dir }}}}/go"
        timeout: 60
"""
PLACES = {
    # ~/.ansible_async/<jid> holds the task's whole result, stdout included.
    "async-job-file": """\
    - name: async
      ansible.builtin.command: echo {{ secret }}
      async: 30
      poll: 1
      changed_when: false""",
    # ansible-runner's jsonfile cache, artifacts/<id>/fact_cache/localhost.
    "fact-cache": """\
    - name: cache it
      ansible.builtin.set_fact:
        remembered: "{{ secret }}"
        cacheable: true""",
    # The same with the tree's own ansible.cfg asking for a jsonfile cache.
    "trees-fact-cache": """\
    - name: cache it
      ansible.builtin.set_fact:
        remembered: "{{ secret }}"
        cacheable: true""",
    # A tree's ansible.cfg log_path gets the whole display.
    "ansible-log-file": """\
    - name: print it
      ansible.builtin.debug:
        msg: "logged {{ secret }}"
""",
}


@pytest.mark.parametrize("place", PLACES)
def test_no_secret_in_files_ansible_keeps_mid_run_or_after(
        place: str, aws: Any, make_repo: Any, tmp_path: Path, state_dir: Path,
        out_dir: Path) -> None:
    value = "canary-place-93e1f07b"
    _config(tmp_path, _store(aws, value, where="sm"))
    tree = {"playbooks/web.yml": HOLDING_PLAY.format(task=PLACES[place].rstrip())}
    if place == "ansible-log-file":
        tree["ansible.cfg"] = f"[defaults]\nlog_path = {tmp_path / 'ansible.log'}\n"
    if place == "trees-fact-cache":
        tree["ansible.cfg"] = ("[defaults]\nfact_caching = jsonfile\n"
                               f"fact_caching_connection = {tmp_path / 'facts'}\n")
    repo = make_repo(tree)

    proc = subprocess.Popen(
        [sys.executable, "-m", "pullboot", "run", "--source", repo.url, "--role", "web",
         "-e", f"out_dir={out_dir}", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        _wait_for_task(state_dir / "runs", "hold still", proc)
        # What is on disk now is what a SIGKILL of the run would leave behind.
        mid_run = leaks(tmp_path, value)
    finally:
        (out_dir / "go").touch()
        out, err = proc.communicate(timeout=120)
    res = Result(proc.returncode, out, err)

    assert mid_run == []
    assert res.rc == 0, res.stderr
    assert leaks(tmp_path, value, res.stdout, res.stderr) == []


def test_no_core_dump_of_the_play(aws: Any, make_repo: Any, tmp_path: Path,
                                  out_dir: Path) -> None:
    _config(tmp_path, _store(aws, "canary-core-1f4b7c2d"))
    play = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: the core size limits ansible-playbook's children have
      ansible.builtin.shell: "ulimit -Sc; ulimit -Hc"
      register: limits
      changed_when: false
    - name: keep them
      ansible.builtin.copy:
        dest: "{{ out_dir }}/limits.txt"
        content: "{{ limits.stdout }}"
        mode: "0600"
"""
    repo = make_repo({"playbooks/web.yml": play})

    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json")

    assert res.rc == 0, res.stderr
    assert (out_dir / "limits.txt").read_text().split() == ["0", "0"]


def test_git_deploy_key_is_never_on_disk_during_a_fetch(aws: Any, tmp_path: Path) -> None:
    key = "canary-deploy-key-2c7f9e41\n"
    aws.client("ssm").put_parameter(Name="/git/key", Value=key, Type="SecureString")
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump({"git": {
        "ssh_key": "ssm:/git/key", "accept_new_host_key": True}}))
    tmp = tmp_path / "tmp"  # the process's temp dir: files here are on disk
    tmp.mkdir()
    # An SSH server that completes the TCP handshake (the backlog does) and never
    # sends its banner: ssh holds the key file until its ConnectTimeout.
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pullboot", "run", "--source",
             f"git+ssh://git@127.0.0.1:{port}/boot.git", "--role", "web", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TMPDIR": str(tmp)})
        try:
            conn, _ = server.accept()  # ssh is connected: the key file exists now
            with conn:
                mid_fetch = leaks(tmp_path, key.strip())
        finally:
            proc.kill()
            out, err = proc.communicate(timeout=60)
            # The killed run's key dir is in memory; the next run would remove it.
            for left in Path("/dev/shm").glob(f"pullboot-git-{proc.pid}-*"):
                shutil.rmtree(left, ignore_errors=True)
    assert mid_fetch == []
    # Killed mid-fetch: nothing left behind on disk either.
    assert leaks(tmp_path, key.strip(), out, err) == []


def test_scratch_dir_of_a_killed_run_is_removed_by_the_next(aws: Any, make_repo: Any,
                                                            tmp_path: Path,
                                                            out_dir: Path) -> None:
    shm = Path("/dev/shm")  # the tmpfs pullboot itself uses
    if not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    gone = subprocess.Popen(["true"])
    gone.wait()  # its PID is now dead: a run that was SIGKILLed
    stale = shm / f"pullboot-{gone.pid}-killed1"
    stale.mkdir(mode=0o700)
    (stale / "async").mkdir()
    (stale / "async" / "j1").write_text("canary-stale-5d3e")
    alive = shm / f"pullboot-{os.getpid()}-alive1"  # a live process's: kept
    alive.mkdir(mode=0o700)
    try:
        _config(tmp_path, _store(aws, "canary-scratch-8e2a"))
        repo = make_repo(web_tree())
        res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                      "--json")
        assert res.rc == 0, res.stderr
        assert not stale.exists()
        assert alive.is_dir()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)
