"""Shared test harness.

Every test runs with IMDS disabled, dummy AWS credentials and no AWS
endpoint, so nothing can reach 169.254.169.254 or a real AWS API unless a
fixture points it at a fake on 127.0.0.1. HOME and the config file are
per-test temp paths, so a developer's own settings never leak in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.fakes.fixtures"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def safe_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("AWS_", "PULLBOOT_", "ANSIBLE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    cfg = tmp_path / "pullboot.yml"
    cfg.write_text("{}\n")
    monkeypatch.setenv("PULLBOOT_CONFIG", str(cfg))
    monkeypatch.setenv("PULLBOOT_STATE_DIR", str(tmp_path / "state"))
    # Never /run/pullboot/status.json: tests must not write outside their tmp dir.
    monkeypatch.setenv("PULLBOOT_STATUS_FILE", str(tmp_path / "status.json"))
    # The interpreter running the tests is the one whose ansible we want.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for var, val in (("GIT_AUTHOR_NAME", "t"), ("GIT_AUTHOR_EMAIL", "t@example.invalid"),
                     ("GIT_COMMITTER_NAME", "t"), ("GIT_COMMITTER_EMAIL", "t@example.invalid")):
        monkeypatch.setenv(var, val)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


# -- git ---------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


@dataclass
class GitRepo:
    path: Path

    @property
    def url(self) -> str:
        return f"git+file://{self.path}"

    @property
    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def commit(self, files: Mapping[str, str], message: str = "change") -> str:
        write_tree(self.path, files)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-qm", message)
        return self.head


@pytest.fixture
def make_repo(tmp_path: Path) -> Any:
    counter = iter(range(1000))

    def make(files: Mapping[str, str], branch: str = "main") -> GitRepo:
        path = tmp_path / f"repo{next(counter)}"
        path.mkdir()
        git(path, "init", "-q", "-b", branch)
        repo = GitRepo(path)
        repo.commit(files, "initial")
        return repo

    return make


def write_tree(root: Path, files: Mapping[str, str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


# -- playbooks -----------------------------------------------------------------

WEB_PLAY = """\
- name: web
  hosts: all
  gather_facts: false
  tasks:
    - name: write marker
      ansible.builtin.copy:
        dest: "{{ out_dir }}/web.txt"
        content: "roles={{ pullboot.roles | join(',') }} id={{ pullboot.instance.id }}\\n"
        mode: "0644"
    - name: say hello
      ansible.builtin.debug:
        msg: hello
    - name: check marker
      ansible.builtin.command: cat {{ out_dir }}/web.txt
      changed_when: false
"""

FAIL_PLAY = """\
- name: broken
  hosts: all
  gather_facts: false
  tasks:
    - name: fine first
      ansible.builtin.debug:
        msg: before
    - name: this task breaks
      ansible.builtin.fail:
        msg: the widget is broken
"""


def web_tree(**extra: str) -> dict[str, str]:
    return {"playbooks/web.yml": WEB_PLAY, **extra}


# -- running the CLI ------------------------------------------------------------


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120,
            input_: str | None = None) -> Result:
    """Run ``python -m pullboot ARGS`` as a real process with the test's environment."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "pullboot", *args], env=full_env, check=False,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          input=input_)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli() -> Iterator[Any]:
    yield run_cli


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
