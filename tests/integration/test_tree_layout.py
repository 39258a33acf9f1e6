"""What pullboot honours in a fetched tree: inventory/, group_vars, ansible.cfg, fallbacks."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from tests.conftest import run_cli

VARS_PLAY = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: write what the inventory and config gave us
      ansible.builtin.copy:
        dest: "{{ out_dir }}/vars.txt"
        content: "{{ greeting }} {{ lookup('config', 'DEFAULT_FORKS') }}\\n"
        mode: "0644"
"""


def test_tree_inventory_and_ansible_cfg(make_repo: Any, out_dir: Path) -> None:
    repo = make_repo({
        "playbooks/web.yml": VARS_PLAY,
        "inventory/hosts.yml": "all:\n  hosts:\n    localhost:\n",
        "inventory/group_vars/all.yml": "greeting: hello-from-group-vars\n",
        "ansible.cfg": "[defaults]\nforks = 7\n",
    })
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json")
    assert res.rc == 0, res.stderr
    assert (out_dir / "vars.txt").read_text() == "hello-from-group-vars 7\n"


def test_launch_parameters_override_group_vars(make_repo: Any, out_dir: Path) -> None:
    repo = make_repo({
        "playbooks/web.yml": VARS_PLAY,
        "inventory/group_vars/all.yml": "greeting: from-group-vars\n",
    })
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "-e", "greeting=from-cli", "--json")
    assert res.rc == 0, res.stderr
    assert (out_dir / "vars.txt").read_text().startswith("from-cli ")


def test_fallback_playbook_when_no_role(make_repo: Any, out_dir: Path) -> None:
    host = socket.gethostname()
    play = VARS_PLAY.replace("{{ greeting }}", "fallback")
    repo = make_repo({"local.yml": play, f"playbooks/{host}.yml": play.replace(
        "fallback", "by-hostname")})
    res = run_cli("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    assert res.report["roles"] == []
    assert res.report["playbooks"] in ([f"playbooks/{host}.yml"], [f"{host}.yml"])
    assert (out_dir / "vars.txt").read_text().startswith("by-hostname ")
