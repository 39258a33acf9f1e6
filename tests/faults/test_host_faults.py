"""Host faults: a full or unwritable state dir, clock jumps, no_log secrets."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import all_files, run_cli, web_tree


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of our own (the tests run as root, like pullboot at boot)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill(fs: Path, *, leave: int = 0) -> Path:
    """Fill ``fs`` until at most ``leave`` bytes are free (unbuffered: no surprise on close)."""
    filler = fs / "filler"
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:  # already full (a failed fetch may have used the rest)
        return filler
    try:
        chunk = 1 << 16
        while True:
            st = os.statvfs(fs)
            free = st.f_bavail * st.f_frsize
            if leave and free <= leave + chunk:
                break
            os.write(fd, b"\0" * (chunk if free > chunk else 4096))
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    return filler


def test_full_state_dir_keeps_the_last_good_release(make_repo: Any, small_fs: Path,
                                                    out_dir: Path) -> None:
    state = small_fs / "state"
    repo = make_repo(web_tree())
    args = ("run", "--state-dir", str(state), "--source", repo.url, "--role", "web", "-e",
            f"out_dir={out_dir}", "--json")
    good = run_cli(*args)
    assert good.rc == 0, good.stderr
    good_release = state / "releases" / good.report["source"]["release"]
    repo.commit({"big.bin": os.urandom(256 * 1024).hex()}, "a change that needs space")

    # Room for the run's own files, not for the new release: a source error.
    filler = _fill(small_fs, leave=300 * 1024)
    mid_fetch = run_cli(*args)
    assert mid_fetch.rc == 4, mid_fetch.stderr
    assert "No space left" in mid_fetch.stderr
    assert "Traceback" not in mid_fetch.stderr
    _assert_untouched(state, good_release)
    filler.unlink(missing_ok=True)

    # No room at all: the state dir itself is unusable.
    filler = _fill(small_fs)
    full = run_cli(*args)
    assert full.rc == 2, full.stderr
    assert "No space left" in full.stderr
    assert "free space" in full.stderr
    assert "Traceback" not in full.stderr
    _assert_untouched(state, good_release)
    filler.unlink(missing_ok=True)
    again = run_cli(*args)
    assert again.rc == 0, again.stderr
    assert again.report["source"]["revision"] == repo.head


def _assert_untouched(state: Path, good_release: Path) -> None:
    assert os.readlink(state / "current") == f"releases/{good_release.name}"
    assert (good_release / "playbooks" / "web.yml").is_file()
    assert not list((state / "releases").glob(".staging-*"))


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path, make_repo: Any) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    repo = make_repo(web_tree())
    res = run_cli("run", "--state-dir", str(blocker / "state"), "--source", repo.url,
                  "--role", "web")
    assert res.rc == 2
    # Whichever step meets it first (the lock, or the state dir itself) names the
    # path, the reason and the fix.
    assert str(blocker) in res.stderr
    assert "Not a directory" in res.stderr
    assert "pullboot: fix:" in res.stderr and "--state-dir" in res.stderr
    assert "Traceback" not in res.stderr


def test_clock_jumping_backwards(make_repo: Any, state_dir: Path, out_dir: Path) -> None:
    repo = make_repo(web_tree())
    args = ("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
    first = run_cli(*args)
    assert first.rc == 0
    # As if the previous run had happened far in the future: the clock jumped back since.
    report_path = state_dir / "runs" / first.report["run_id"] / "report.json"
    saved = json.loads(report_path.read_text())
    saved["started_at"] = "2099-01-01T00:00:00+00:00"
    report_path.write_text(json.dumps(saved))

    second = run_cli(*args)
    assert second.rc == 0
    assert any("clock went backwards" in w for w in second.report["warnings"])
    assert second.report["sequence"] == first.report["sequence"] + 1
    listed = json.loads(run_cli("status", "--json").stdout)
    assert [r["run_id"] for r in listed] == [second.report["run_id"], first.report["run_id"]]


def test_no_log_secret_stays_out_of_every_file(make_repo: Any, tmp_path: Path,
                                               state_dir: Path) -> None:
    canary = "canary-nolog-51c2e8a4"
    secret_file = tmp_path / "outside" / "secret"
    secret_file.parent.mkdir()
    secret_file.write_text(canary)
    play = f"""\
- hosts: all
  gather_facts: false
  tasks:
    - name: use a secret quietly
      ansible.builtin.debug:
        msg: "{{{{ lookup('file', '{secret_file}') }}}}"
      no_log: true
    - name: fail quietly with it
      ansible.builtin.command: /bin/false {{{{ lookup('file', '{secret_file}') }}}}
      no_log: true
      ignore_errors: true
"""
    repo = make_repo({"playbooks/web.yml": play})
    res = run_cli("run", "--source", repo.url, "--role", "web", "--json", "-vv")
    assert res.rc == 0, res.stderr
    assert canary not in res.stdout + res.stderr
    leaked = [p for p in all_files(state_dir) if canary.encode() in p.read_bytes()]
    assert leaked == []
