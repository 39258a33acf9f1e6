"""Signals, timeouts and run options reach ansible and the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import run_cli, web_tree

SLOW_PLAY = """\
- name: slow
  hosts: all
  gather_facts: false
  tasks:
    - name: wait a long time
      ansible.builtin.command: sleep 300
"""


def _wait_for_event(runs: Path, event: str, proc: subprocess.Popen[str],
                    deadline_s: float = 60) -> None:
    """Block until some run's events.jsonl holds ``event`` (a condition, not a sleep)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for path in runs.glob("*/events.jsonl"):
            if f'"event": "{event}"' in path.read_text():
                return
        time.sleep(0.05)
    raise AssertionError(f"no {event} event within {deadline_s}s")


def test_sigterm_cancels_the_play(make_repo: Any, state_dir: Path) -> None:
    repo = make_repo({"playbooks/web.yml": SLOW_PLAY})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pullboot", "run", "--source", repo.url, "--role", "web",
         "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ))
    _wait_for_event(state_dir / "runs", "runner_on_start", proc)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    assert time.monotonic() - started < 15
    report = json.loads(out)
    assert report["status"] == "canceled"
    saved = json.loads((state_dir / "runs" / report["run_id"] / "report.json").read_text())
    assert saved["status"] == "canceled"


def test_job_timeout(make_repo: Any) -> None:
    repo = make_repo({"playbooks/web.yml": SLOW_PLAY})
    res = run_cli("run", "--source", repo.url, "--role", "web", "--timeout", "2", "--json")
    assert res.rc == 5, res.stderr
    assert res.report["status"] == "timeout"


def test_check_mode_changes_nothing(make_repo: Any, out_dir: Path) -> None:
    repo = make_repo(web_tree())
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--check", "--diff", "--json")
    # In check mode the copy "changes" nothing on disk, so `cat` then fails.
    assert not (out_dir / "web.txt").exists()
    assert res.report["options"]["check"] is True
    assert res.report["options"]["diff"] is True


def test_tags_and_skip_tags(make_repo: Any, out_dir: Path) -> None:
    play = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: tagged a
      ansible.builtin.copy: {dest: "{{ out_dir }}/a", content: a, mode: "0644"}
      tags: [a]
    - name: tagged b
      ansible.builtin.copy: {dest: "{{ out_dir }}/b", content: b, mode: "0644"}
      tags: [b]
"""
    repo = make_repo({"playbooks/web.yml": play})
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--tags", "a,b", "--skip-tags", "b", "--json")
    assert res.rc == 0, res.stderr
    assert (out_dir / "a").exists()
    assert not (out_dir / "b").exists()


def test_several_roles_run_in_order_in_one_play_run(make_repo: Any, out_dir: Path) -> None:
    base = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: base first
      ansible.builtin.shell: echo base >> {{ out_dir }}/order
"""
    repo = make_repo(web_tree(**{"playbooks/base.yml": base}))
    res = run_cli("run", "--source", repo.url, "--role", "base,web", "-e",
                  f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    assert [r["name"] for r in res.report["roles"]] == ["base", "web"]
    assert res.report["playbooks"] == ["playbooks/base.yml", "playbooks/web.yml"]
    assert (out_dir / "order").read_text() == "base\n"
    assert (out_dir / "web.txt").read_text().startswith("roles=base,web ")
