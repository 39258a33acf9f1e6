"""Boot integration through real processes: the run lock, live status, splay, systemd units."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from tests.conftest import REPO, run_cli, web_tree

HOLD_PLAY = """\
- name: hold
  hosts: all
  gather_facts: false
  tasks:
    - name: wait for the go file
      ansible.builtin.wait_for:
        path: "{{ out_dir }}/go"
        timeout: 120
"""

HOLD_THEN_FAIL_PLAY = HOLD_PLAY + """\
    - name: then break
      ansible.builtin.fail:
        msg: broken on purpose
"""

UNITS = REPO / "packaging" / "systemd"


@dataclass
class Background:
    """A pullboot process with stdout/stderr in files (readable while it runs)."""

    proc: subprocess.Popen[str]
    out: Path
    err: Path

    def stderr(self) -> str:
        return self.err.read_text()

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=timeout)
        return rc, self.out.read_text(), self.err.read_text()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """``start(*args)``: run ``python -m pullboot ARGS`` in the background; killed at the end."""
    made: list[Background] = []
    handles: list[IO[str]] = []

    def run(*args: str) -> Background:
        n = len(made)
        out, err = tmp_path / f"bg{n}.out", tmp_path / f"bg{n}.err"
        handles.extend([out.open("w"), err.open("w")])
        proc = subprocess.Popen([sys.executable, "-m", "pullboot", *args], stdout=handles[-2],
                                stderr=handles[-1], text=True, env=dict(os.environ), cwd=REPO)
        made.append(Background(proc, out, err))
        return made[-1]

    yield run
    for bg in made:
        if bg.proc.poll() is None:
            bg.proc.kill()
            bg.proc.wait()
    for handle in handles:
        handle.close()


def wait_until(condition: Any, what: str, timeout: float = 60) -> None:
    """Poll ``condition()`` until true (a condition, not a sleep); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def task_started(state_dir: Path, task: str) -> bool:
    for path in (state_dir / "runs").glob("*/events.jsonl"):
        for line in path.read_text().splitlines():
            if '"runner_on_start"' in line and task in line:
                return True
    return False


def live_status(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "status.json").read_text())
    return data


def test_second_run_exits_75_at_once_and_wait_lock_queues(
        make_repo: Any, start: Any, tmp_path: Path, state_dir: Path, out_dir: Path) -> None:
    repo = make_repo({"playbooks/web.yml": HOLD_PLAY})
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    holder = start(*args)
    wait_until(lambda: task_started(state_dir, "wait for the go file"), "the holder's play")

    began = time.monotonic()
    refused = run_cli(*args)
    elapsed = time.monotonic() - began
    assert refused.rc == 75, refused.stderr
    assert elapsed < 1.0, f"exit 75 took {elapsed:.2f}s"
    assert f"PID {holder.proc.pid} (run), started 20" in refused.stderr
    assert "--wait-lock" in refused.stderr
    assert refused.stdout == ""

    queued = start(*args, "--wait-lock", "120")
    wait_until(lambda: "waiting up to 120s for the run lock" in queued.stderr(),
               "the queued run to announce it waits")
    assert holder.proc.poll() is None and queued.proc.poll() is None
    (out_dir / "go").touch()
    rc, out, err = holder.finish()
    assert rc == 0, err
    first = json.loads(out)
    rc, out, err = queued.finish()
    assert rc == 0, err
    second = json.loads(out)
    assert second["started_at"] >= first["finished_at"]
    # journald-friendly: no colours off a terminal, one closing line per run.
    assert "\x1b[" not in err
    assert err.count(f"run {second['run_id']} finished: successful") == 1


def test_lock_of_a_killed_run_never_blocks(make_repo: Any, start: Any, tmp_path: Path,
                                           state_dir: Path, out_dir: Path) -> None:
    repo = make_repo({"playbooks/web.yml": HOLD_PLAY})
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    victim = start(*args)
    wait_until(lambda: task_started(state_dir, "wait for the go file"), "the victim's play")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()

    # The status file still says "running", but its PID is gone: --wait says so.
    died = run_cli("status", "--wait", "--timeout", "30")
    assert died.rc == 1, died.stderr
    assert "without finishing" in died.stderr

    (out_dir / "go").touch()  # lets an orphaned ansible-playbook end, if any survived
    after = run_cli(*args)
    assert after.rc == 0, after.stderr
    assert after.report["status"] == "successful"


def test_status_wait_blocks_until_the_run_ends_and_exits_with_its_code(
        make_repo: Any, start: Any, tmp_path: Path, state_dir: Path, out_dir: Path) -> None:
    repo = make_repo({"playbooks/web.yml": HOLD_THEN_FAIL_PLAY})
    run = start("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}")
    wait_until(lambda: task_started(state_dir, "wait for the go file"), "the play")
    live = live_status(tmp_path)
    assert (live["status"], live["phase"], live["pid"]) == ("running", "run", run.proc.pid)
    run_id = live["run_id"]
    assert (state_dir / "runs" / run_id).is_dir()

    waiter = start("status", "--wait")
    wait_until(lambda: "pullboot: waiting: run" in waiter.stderr(), "status --wait to wait")
    assert waiter.proc.poll() is None, "status --wait returned while the run was going"
    (out_dir / "go").touch()
    assert run.finish()[0] == 1
    rc, out, _ = waiter.finish()
    assert rc == 1
    assert out == (f"status: failed (exit 1) run {run_id} report "
                   f"{state_dir / 'runs' / run_id / 'report.json'}\n")
    done = live_status(tmp_path)
    assert (done["status"], done["phase"], done["exit_code"]) == ("failed", "done", 1)

    table = run_cli("status")
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == ["RUN", "STATUS", "STARTED", "ROLES", "REVISION", "CHANGED",
                              "FAILED", "DURATION", "REASON"]
    assert row.split()[:3] == [run_id, "failed", done["started_at"][:10]]


def test_status_wait_ignores_a_status_file_from_an_earlier_boot(tmp_path: Path) -> None:
    status = {"status": "successful", "phase": "done", "run_id": "x", "pid": 1,
              "boot_id": "an-earlier-boot", "exit_code": 0}
    (tmp_path / "status.json").write_text(json.dumps(status))
    res = run_cli("status", "--wait", "--timeout", "0.5")
    assert res.rc == 5
    assert "no run has started since this boot" in res.stderr
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (tmp_path / "status.json").write_text(json.dumps({**status, "boot_id": boot_id,
                                                      "status": "error", "exit_code": 4}))
    res = run_cli("status", "--wait", "--timeout", "5", "--json")
    assert res.rc == 4
    assert res.report["run_id"] == "x"


def test_splay_skips_the_first_run_and_is_stable_per_instance(
        make_repo: Any, make_imds: Any, out_dir: Path) -> None:
    make_imds(tags={"pullboot:role": "web"})
    repo = make_repo(web_tree())
    args = ("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    first = run_cli(*args, "--splay", "600")
    assert first.rc == 0, first.stderr
    assert first.report["splay_s"] == 0  # the first run on an instance is not delayed
    second = run_cli(*args, "--splay", "2", "--splay-stable")
    third = run_cli(*args, "--splay", "2", "--splay-stable")
    assert second.rc == third.rc == 0, second.stderr + third.stderr
    delay = second.report["splay_s"]
    assert 0 < delay < 2
    assert third.report["splay_s"] == delay
    assert second.report["duration_s"] >= delay
    assert f"splay: waiting {delay:.1f}s before fetching (stable for i-" in second.stderr


def _instance_id_with_long_stable_splay() -> str:
    # Stable splay is a pure function of the instance id; pick one whose slot is
    # past the middle, so that the run is still splaying when we look.
    for n in range(1000):
        candidate = f"i-0{n:016x}"
        fraction = int.from_bytes(hashlib.sha256(candidate.encode()).digest()[:8], "big") / 2**64
        if fraction > 0.5:
            return candidate
    raise AssertionError("no candidate")


def test_sigterm_during_splay_cancels_promptly(make_repo: Any, make_imds: Any, start: Any,
                                               tmp_path: Path, out_dir: Path) -> None:
    make_imds(instance_id=_instance_id_with_long_stable_splay(), tags={"pullboot:role": "web"})
    repo = make_repo(web_tree())
    (tmp_path / "pullboot.yml").write_text("splay_first_boot: true\n")
    run = start("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--splay", "300",
                "--splay-stable", "--json")
    wait_until(lambda: (tmp_path / "status.json").exists()
               and live_status(tmp_path)["phase"] == "splay", "the splay phase")
    began = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    rc, out, err = run.finish(timeout=30)
    assert rc == 5, err
    assert time.monotonic() - began < 10
    assert json.loads(out)["status"] == "canceled"
    assert not (out_dir / "web.txt").exists()


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install systemd (.ci/run does)"
    names = ["pullboot.service", "pullboot-converge.service", "pullboot.timer"]
    assert sorted(p.name for p in UNITS.iterdir()) == sorted(names)
    boot = (UNITS / "pullboot.service").read_text()
    converge = (UNITS / "pullboot-converge.service").read_text()
    timer = (UNITS / "pullboot.timer").read_text()
    assert "ExecStart=/usr/local/bin/pullboot run\n" in boot
    assert "Type=oneshot" in boot and "After=network-online.target multi-user.target " \
        "cloud-final.service" in boot
    assert "ExecStart=/usr/local/bin/pullboot run --only-if-changed\n" in converge
    assert "Unit=pullboot-converge.service" in timer and "RandomizedDelaySec=" in timer
    # verify checks that ExecStart's program exists: point it at this venv's pullboot.
    exe = Path(sys.executable).parent / "pullboot"
    for name in names:
        text = (UNITS / name).read_text().replace("/usr/local/bin/pullboot", str(exe))
        (tmp_path / name).write_text(text)
    res = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in names)],
                         check=False, capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values too; any output is a finding.
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


def test_the_agent_role_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The image's units come from roles/pullboot_agent templates: render them and verify."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install systemd (.ci/run does)"
    role = UNITS.parents[1] / "roles" / "pullboot_agent"
    names = ["pullboot.service", "pullboot-converge.service", "pullboot.timer"]
    exe = Path(sys.executable).parent / "pullboot"
    play = tmp_path / "render.yml"
    play.write_text(f"""\
- hosts: localhost
  connection: local
  gather_facts: false
  vars_files: ["{role}/defaults/main.yml"]
  vars:
    pullboot_agent_bin: "{exe}"
  tasks:
    - name: render the units
      ansible.builtin.template:
        src: "{role}/templates/{{{{ item }}}}.j2"
        dest: "{tmp_path}/{{{{ item }}}}"
        mode: "0644"
      loop: {names}
""")
    rendered = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(play)],
        check=False, capture_output=True, text=True, timeout=120,
        env={**os.environ, "ANSIBLE_PYTHON_INTERPRETER": sys.executable})
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    assert f"ExecStart={exe} run" in (tmp_path / "pullboot.service").read_text()
    res = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in names)],
                         check=False, capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
