"""Every network wait has a deadline that bounds the whole operation, and SIGTERM ends it.

Driven through the CLI against real servers on 127.0.0.1: a TCP server that accepts and never
answers (``tests/fakes/blackhole.py``), the S3 fault proxy pacing bodies at 200 B/s, and an
IMDS dripping one byte a second. Bounds asserted are generous: 3x the configured budget.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, run_cli, web_tree
from tests.fakes.blackhole import Blackhole
from tests.fakes.faultproxy import S3_ENDPOINT_ENV
from tests.fakes.imds import HostileIMDS

BUDGET = 5.0


def _config(tmp_path: Path, **settings: Any) -> None:
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump(settings))


def _timed(*args: str) -> tuple[Any, float]:
    started = time.monotonic()
    result = run_cli(*args, timeout=120)
    return result, time.monotonic() - started


@pytest.fixture
def blackhole() -> Any:
    with Blackhole(lifetime_s=120) as server:
        yield server


def test_git_server_that_never_answers_ends_within_the_budget(
        tmp_path: Path, blackhole: Blackhole) -> None:
    _config(tmp_path, fetch={"retry_budget": BUDGET})
    result, took = _timed("run", "--source", f"git://127.0.0.1:{blackhole.port}/repo.git",
                          "--role", "web", "--json")
    assert blackhole.accepted >= 1
    assert took < 3 * BUDGET + 10, f"took {took:.1f}s"
    assert result.rc == 4, result.stderr
    assert "did not finish within the fetch deadline" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.report["status"] == "error"


def test_git_hang_falls_back_to_the_last_good_release(
        tmp_path: Path, blackhole: Blackhole, make_repo: Any, out_dir: Path) -> None:
    repo = make_repo(web_tree())
    _config(tmp_path, fetch={"retry_budget": BUDGET})
    args = ("--role", "web", "-e", f"out_dir={out_dir}", "--json")
    good = run_cli("run", "--source", repo.url, *args)
    assert good.rc == 0, good.stderr
    stale, took = _timed("run", "--source", f"git://127.0.0.1:{blackhole.port}/repo.git", *args)
    assert took < 3 * BUDGET + 10, f"took {took:.1f}s"
    assert stale.rc == 0, stale.stderr
    assert stale.report["source"]["stale"] is True


def test_sigterm_ends_a_hung_git_fetch_promptly(tmp_path: Path, blackhole: Blackhole) -> None:
    _config(tmp_path, fetch={"retry_budget": 300})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pullboot", "run", "--source",
         f"git://127.0.0.1:{blackhole.port}/repo.git", "--role", "web", "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    took = _sigterm_once(proc, ready=lambda: blackhole.connected.wait(60))
    assert took < 10, f"SIGTERM took {took:.1f}s to end the run"


def _bundle(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:  # not compressed: keeps the size
        for name, content in {**web_tree(), "pad.bin": "x" * size}.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_s3_dripping_200_bytes_a_second_ends_within_the_budget(
        aws: Any, fault_proxy: Any, tmp_path: Path) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="boot", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="boot", Key="web.tar", Body=_bundle(64 * 1024))
    proxy = fault_proxy(env=S3_ENDPOINT_ENV)
    proxy.throttle(200)
    _config(tmp_path, fetch={"retry_budget": BUDGET})
    result, took = _timed("run", "--source", "s3://boot/web.tar", "--role", "web", "--json")
    assert took < 3 * BUDGET + 10, f"took {took:.1f}s"
    assert result.rc == 4, result.stderr
    assert "fetch deadline" in result.stderr
    assert "Traceback" not in result.stderr


def test_imds_dripping_one_byte_a_second_ends_within_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HostileIMDS(drip_bps=1, drip_limit_s=60) as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
        _config(tmp_path, imds={"timeout": 2, "budget": BUDGET})
        result, took = _timed("run", "--source", str(tmp_path), "--role", "web", "--json")
    assert took < 3 * BUDGET + 10, f"took {took:.1f}s"
    assert result.rc == 3, result.stderr
    assert "did not answer" in result.stderr and "within 5s" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.report["status"] == "error"


def test_git_cache_lock_left_by_a_killed_fetch_is_cleared(
        tmp_path: Path, make_repo: Any, out_dir: Path, state_dir: Path) -> None:
    repo = make_repo(web_tree())
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    assert run_cli(*args).rc == 0
    (git_dir,) = list((state_dir / "cache" / "git").glob("*/.git"))
    # What a SIGKILLed `git fetch --depth 1` leaves behind (and a killed reset/commit).
    (git_dir / "shallow.lock").write_text("")
    (git_dir / "index.lock").write_text("")
    new = repo.commit({"playbooks/web.yml": web_tree()["playbooks/web.yml"] + "\n"})
    second = run_cli(*args)
    assert second.rc == 0, second.stderr
    assert second.report["source"]["revision"] == new
    assert second.report["source"].get("stale") is not True
    assert not (git_dir / "shallow.lock").exists()
    assert "stale git lock" in second.stderr


def test_a_killed_fetch_really_leaves_no_wedge(
        tmp_path: Path, make_repo: Any, out_dir: Path, blackhole: Blackhole) -> None:
    """SIGKILL of the whole process group mid-fetch, then a normal run succeeds."""
    repo = make_repo(web_tree())
    _config(tmp_path, fetch={"retry_budget": 300})
    url = f"git://127.0.0.1:{blackhole.port}/repo.git"
    proc = subprocess.Popen([sys.executable, "-m", "pullboot", "run", "--source", url,
                             "--role", "web", "--json"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert blackhole.connected.wait(60), "git never connected"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    result = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                     "--json")
    assert result.rc == 0, result.stderr


@pytest.mark.parametrize("unit", ["packaging/systemd/pullboot.service",
                                  "packaging/systemd/pullboot-converge.service",
                                  "roles/pullboot_agent/templates/pullboot.service.j2",
                                  "roles/pullboot_agent/templates/pullboot-converge.service.j2"])
def test_boot_units_have_a_finite_start_timeout(unit: str) -> None:
    """Oneshot units wait forever by default; both copies of each unit bound the job."""
    lines = (REPO / unit).read_text().splitlines()
    (timeout,) = [line for line in lines if line.startswith("TimeoutStartSec=")]
    assert timeout == "TimeoutStartSec=1h"


def test_sigterm_ends_the_wait_for_imds_promptly(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """IMDS may be unreachable for all of imds.budget (here 300 s): SIGTERM must not wait."""
    status = Path(os.environ["PULLBOOT_STATUS_FILE"])
    _config(tmp_path, imds={"budget": 300})
    with HostileIMDS(start_down=True) as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
        proc = subprocess.Popen([sys.executable, "-m", "pullboot", "run", "--source",
                                 str(tmp_path), "--role", "web", "--json"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        took = _sigterm_once(proc, ready=lambda: _wait_for_phase(status, "resolve", proc))
    assert took < 10, f"SIGTERM took {took:.1f}s to end the IMDS wait"


def _sigterm_once(proc: subprocess.Popen[str], *, ready: Callable[[], bool]) -> float:
    """Once ``ready()`` holds, SIGTERM the run; seconds it took to end as canceled (exit 5)."""
    try:
        assert ready(), "the run never reached the wait it should be in"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 5, err
    assert json.loads(out)["status"] == "canceled"
    assert "Traceback" not in err
    return took


def _wait_for_phase(status: Path, phase: str, proc: subprocess.Popen[str]) -> bool:
    """Poll the live status file for ``phase`` (a condition with a deadline, not a sleep)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "pullboot ended early"
        try:
            if json.loads(status.read_text()).get("phase") == phase:
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"phase {phase!r} never reached")
