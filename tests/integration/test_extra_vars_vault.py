"""`-e` as ansible reads it, and local vault passwords, via the CLI (issue 13 items 7, 8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import run_cli

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
