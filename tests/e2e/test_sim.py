"""End to end: simulated instances boot from the image and converge, as on EC2.

Every test drives ``pullboot sim`` as a user would (a subprocess, ``--json``) and checks what
the instance itself reports: its report.json, its files, its web page. Faults come from the
test's own servers on 127.0.0.1, which the instance reaches because the simulator rewrites
loopback URLs (a Git server over HTTP that is stopped, an Auto Scaling endpoint that records
lifecycle actions).

One image is built per session (``pullboot sim image``; cached across sessions while the
checkout is unchanged). No podman is a failure, never a skip: CI installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git, write_tree
from tests.fakes.awsquery import AUTO_SCALING_ENDPOINT_ENV, FakeAwsQuery
from tests.fakes.githttp import GitHttpServer

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "packaging" / "podman" / "containers.conf"
IMAGE_TIMEOUT_S = 1800
BOOT_TIMEOUT_S = 600

# A light tree for the tests that are not about the web role: one task each.
HELLO_TREE = {
    "playbooks/hello.yml": """\
- name: Hello
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the greeting
      ansible.builtin.copy:
        dest: /srv/hello.txt
        content: >-
          {{ greeting | default('hello') }} from {{ pullboot.instance.id }}
          at {{ pullboot.source.revision }}
        mode: "0644"
""",
    "playbooks/broken.yml": """\
- name: Broken
  hosts: all
  gather_facts: false
  tasks:
    - name: Fail on purpose
      ansible.builtin.fail:
        msg: this role is broken on purpose
""",
}

Sim = Callable[..., dict[str, Any]]


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


@pytest.fixture(scope="session")
def sim_image() -> str:
    """The instance image, built once for the session (or found cached)."""
    if shutil.which("podman") is None:
        pytest.fail("podman is required for the simulated instances (CI installs it: "
                    "apt-get install -y podman runc debootstrap slirp4netns uidmap)")
    proc = subprocess.run([sys.executable, "-m", "pullboot", "sim", "image"],
                          capture_output=True, text=True, timeout=IMAGE_TIMEOUT_S,
                          env=podman_env(), check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip()


@pytest.fixture
def sim(sim_image: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Sim]:
    """``sim(command, *args, expect=0) -> JSON result`` on this test's own instance."""
    name = f"e2e-{request.node.name[5:25].replace('_', '-').strip('-')}-{os.getpid()}"
    env = {**podman_env(), "PULLBOOT_SIM_DIR": str(tmp_path / "sim")}

    def run(command: str, *args: str, expect: int | None = 0) -> dict[str, Any]:
        argv = [sys.executable, "-m", "pullboot", "sim", command, "--name", name, *args]
        if command == "boot":  # the session's image, even if the checkout changes meanwhile
            argv += ["--image", sim_image]
        if command in ("boot", "converge", "reboot"):
            argv += ["--json", "--timeout", str(BOOT_TIMEOUT_S)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                              timeout=BOOT_TIMEOUT_S + 300)
        if expect is not None:
            assert proc.returncode == expect, (
                f"pullboot sim {command} exited {proc.returncode}:\n{proc.stderr[-6000:]}")
        if command in ("boot", "converge", "reboot"):
            result: dict[str, Any] = json.loads(proc.stdout)
            result["stderr"] = proc.stderr
            return result
        return {"stdout": proc.stdout, "stderr": proc.stderr}

    try:
        yield run
    finally:
        run("down", expect=None)
        leftover = subprocess.run(["podman", "container", "exists", f"pullboot-sim-{name}"],
                                  env=podman_env(), check=False)
        assert leftover.returncode != 0, f"pullboot sim down left pullboot-sim-{name} behind"


def in_instance(result: dict[str, Any], *cmd: str) -> str:
    return subprocess.run(["podman", "exec", result["container"], *cmd], env=podman_env(),
                          capture_output=True, text=True, check=True).stdout


def page(result: dict[str, Any]) -> str:
    port = result["ports"]["80"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        return resp.read().decode()


def commit_tree(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    write_tree(path, files)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "boot tree")
    return git(path, "rev-parse", "HEAD")


def repo_playbooks(path: Path) -> str:
    """This repository's playbooks, roles and inventory, committed alone in a repo."""
    files = {}
    for top in ("playbooks", "roles", "inventory"):
        for item in (REPO / top).rglob("*"):
            if item.is_file() and "__pycache__" not in item.parts:
                files[str(item.relative_to(REPO))] = item.read_text()
    return commit_tree(path, files)


# -- Git: the repository's own web role, then a tag change and the timer's run -------------------


@pytest.fixture
def web_instance(sim: Sim, tmp_path: Path) -> tuple[Sim, dict[str, Any], str]:
    sha = repo_playbooks(tmp_path / "boot")
    booted = sim("boot", "--role", "web", "--source", f"git+file://{tmp_path / 'boot'}")
    return sim, booted, sha


def test_boot_from_git_converges_the_web_role_and_serves_its_page(
        web_instance: tuple[Sim, dict[str, Any], str]) -> None:
    sim, booted, sha = web_instance
    report = booted["run"]["report"]
    assert booted["run"]["unit"] == "pullboot.service"
    assert booted["run"]["result"] == "done"
    assert report["status"] == "successful", report
    assert report["instance"]["id"] == booted["instance_id"]
    assert report["roles"] == [{"name": "web", "origin": "imds-tag:pullboot:role"}]
    assert report["source"]["kind"] == "git"
    assert report["source"]["revision"] == sha
    assert booted["page"]["status"] == 200
    body = page(booted)
    assert booted["instance_id"] in body
    assert sha in body

    # A tag change, then what pullboot.timer runs: the play runs again with the new value.
    sim("tag", "pullboot:var:web_title=Retitled by a tag")
    again = sim("converge")
    assert again["run"]["unit"] == "pullboot-converge.service"
    report = again["run"]["report"]
    assert report["status"] == "successful", report
    assert report["vars"]["web_title"] == "imds-tag:pullboot:var:web_title"
    assert again["page"]["title"] == "Retitled by a tag"
    assert report["run_id"] != booted["run"]["report"]["run_id"]

    # Nothing changed since: the timer's run does nothing.
    idle = sim("converge")
    assert idle["run"]["report"]["status"] == "unchanged"


# -- S3: a bundle on moto ---------------------------------------------------------------------


def test_boot_from_an_s3_bundle_on_moto(sim: Sim, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, HELLO_TREE)
    booted = sim("boot", "--role", "hello", "--source", "s3://boot-bundles/roles/{role}.tar.gz",
                 "--bundle", str(tree), "-e", "greeting=bonjour")
    report = booted["run"]["report"]
    assert report["status"] == "successful", report
    assert report["source"]["kind"] == "s3"
    assert report["source"]["url"] == "s3://boot-bundles/roles/{role}.tar.gz"
    assert report["source"]["revision"]
    assert booted["endpoints"]["bundles"] == ["s3://boot-bundles/roles/hello.tar.gz"]
    greeting = in_instance(booted, "cat", "/srv/hello.txt")
    assert greeting.startswith(f"bonjour from {booted['instance_id']} at ")


# -- a failing role: failed report, and the launch is abandoned --------------------------------


def test_failing_role_reports_failure_and_abandons_the_launch(sim: Sim, tmp_path: Path) -> None:
    repo = tmp_path / "boot"
    commit_tree(repo, HELLO_TREE)
    # The hook is a launch decision: user-data may name it, a tag may not (trust policy).
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text(f"#cloud-config\npullboot:\n  source: git+file://{repo}\n"
                         "  signals: {lifecycle_hook: launching}\n")
    with FakeAwsQuery() as autoscaling:
        booted = sim("boot", "--role", "broken", "--user-data", str(user_data),
                     "--tag", "aws:autoscaling:groupName=web-asg",
                     "--env", f"{AUTO_SCALING_ENDPOINT_ENV}={autoscaling.url}", expect=1)
        calls = autoscaling.calls_for("CompleteLifecycleAction")
    report = booted["run"]["report"]
    assert booted["run"]["result"] == "failed"  # pullboot.service exits 1
    assert report["status"] == "failed"
    assert report["exit_code"] == 1
    assert [f["task"] for f in report["failures"]] == ["Fail on purpose"]
    assert len(calls) == 1, calls
    params = calls[0]["params"]
    assert params["LifecycleActionResult"] == "ABANDON"
    assert params["LifecycleHookName"] == "launching"
    assert params["AutoScalingGroupName"] == "web-asg"
    assert params["InstanceId"] == booted["instance_id"]
    lifecycle = [s for s in report["signals"] if s["kind"] == "lifecycle"]
    assert lifecycle and lifecycle[0]["ok"], report["signals"]


# -- the source is down at boot, a release is cached: the last good one runs -------------------


def test_reboot_with_the_source_down_runs_the_last_good_release(sim: Sim, tmp_path: Path) -> None:
    work = tmp_path / "work"
    sha = commit_tree(work, HELLO_TREE)
    served = tmp_path / "served"
    served.mkdir()
    git(tmp_path, "clone", "-q", "--bare", str(work), str(served / "boot.git"))
    server = GitHttpServer(served)
    server.start()
    try:
        booted = sim("boot", "--role", "hello", "--source", f"git+{server.url}/boot.git",
                     # how long an unreachable source is retried before falling back
                     "--env", "PULLBOOT_FETCH_RETRY_BUDGET=5")
    finally:
        server.stop()
    first = booted["run"]["report"]
    assert first["status"] == "successful", first
    assert first["source"]["revision"] == sha
    assert first["source"]["url"].startswith("git+http://10.0.2.2:")  # the host, seen inside

    rebooted = sim("reboot")
    report = rebooted["run"]["report"]
    assert report["status"] == "successful", report
    assert report["source"]["stale"] is True
    assert report["source"]["revision"] == sha
    assert report["source"]["release"] == first["source"]["release"]
    assert report["source"]["stale_reason"]
    assert in_instance(rebooted, "cat", "/srv/hello.txt").startswith("hello from ")
