"""The state dir survives anything: damaged files pullboot reads back, hostile status dirs.

Every JSON (or counter, or pointer) file that pullboot reads back from its state
dir is damaged in each way a crash, a full disk or a careless hand can damage it;
later runs and ``pullboot status`` keep working and name the file in a warning.
The live status file's directory may belong to others: root's write is never
redirected through a symlink, and a directory others can write is refused.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Result, run_cli, web_tree

OLD_RUN = "20260101T000000Z-0ld0ld"
GOOD_RUN = "20260101T000100Z-900d00"
GOOD_REPORT = {"run_id": GOOD_RUN, "status": "successful", "started_at": "2026-01-01T00:01:00",
               "roles": [{"name": "web"}], "stats": {"localhost": {"ok": 1}}, "duration_s": 1.0}


def _damage_list(path: Path) -> None:
    path.write_text("[]\n")


def _damage_truncated(path: Path) -> None:
    path.write_text('{"run_id": "20260101T0')


def _damage_binary(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\x00\x01\x9c" * 20)


def _damage_directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("{}")


def _damage_dangling(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere" / "gone.json")


def _damage_fifo(path: Path) -> None:
    os.mkfifo(path)  # a reader that opens it blocking would hang forever


DAMAGE: dict[str, Callable[[Path], None]] = {
    "list": _damage_list, "truncated": _damage_truncated, "binary": _damage_binary,
    "directory": _damage_directory, "dangling-symlink": _damage_dangling, "fifo": _damage_fifo,
}


def _damaged_state(state: Path, status_file: Path, damage: Callable[[Path], None]) -> dict[
        str, Path]:
    """Damage every file pullboot reads back; returns them by what they are."""
    for sub in ("runs", "releases", "spool"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    for run, seq in ((OLD_RUN, 1), (GOOD_RUN, 2)):
        (state / "runs" / run).mkdir()
        (state / "runs" / run / "seq").write_text(f"{seq}\n")
    (state / "runs" / GOOD_RUN / "report.json").write_text(json.dumps(GOOD_REPORT))
    (state / "spool" / OLD_RUN).mkdir()
    files = {"report": state / "runs" / OLD_RUN / "report.json",
             "last-success": state / "last-success.json",
             "boot-marker": state / "boot-signals.json",
             "spool-meta": state / "spool" / OLD_RUN / "meta.json",
             "sequence": state / "sequence", "current": state / "current",
             "last-good": state / "last-good", "status": status_file}
    for path in files.values():
        damage(path)
    return files


def _warned(res: Result, path: Path) -> bool:
    return any(str(path) in line and "WARNING" in line for line in res.stderr.splitlines())


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_state_files_never_wedge_runs_or_status(kind: str, make_imds: Any,
                                                        make_repo: Any, tmp_path: Path,
                                                        state_dir: Path, out_dir: Path) -> None:
    make_imds(tags={"pullboot:role": "web"})
    status_file = tmp_path / "status.json"
    files = _damaged_state(state_dir, status_file, DAMAGE[kind])

    before = run_cli("status")
    assert before.rc == 0, before.stderr
    assert GOOD_RUN in before.stdout and "Traceback" not in before.stderr
    assert _warned(before, files["report"]), before.stderr
    assert _warned(before, files["status"]), before.stderr

    repo = make_repo(web_tree())
    res = run_cli("run", "--only-if-changed", "--source", repo.url,
                  "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    assert "Traceback" not in res.stderr
    # (``current`` is not read by a run, only replaced: checked below.)
    for name in ("last-success", "boot-marker", "spool-meta", "sequence", "last-good"):
        assert _warned(res, files[name]), (name, res.stderr)
    run_id = res.report["run_id"]
    # The damage is repaired by the run's own writes, not left to trip the next one.
    assert (state_dir / "current").is_symlink() and (state_dir / "last-good").is_symlink()
    assert json.loads((state_dir / "last-success.json").read_text())["run_id"] == run_id
    assert int((state_dir / "sequence").read_text()) == 3
    assert json.loads(status_file.read_text())["run_id"] == run_id
    assert not (state_dir / "spool" / OLD_RUN).exists(), "an entry without a destination"

    after = run_cli("status", "--json")
    assert after.rc == 0, after.stderr
    assert [r["run_id"] for r in json.loads(after.stdout)] == [run_id, GOOD_RUN]
    waited = run_cli("status", "--wait", "--timeout", "60")
    assert waited.rc == 0 and run_id in waited.stdout, waited.stderr
    again = run_cli("run", "--only-if-changed", "--source", repo.url,
                    "-e", f"out_dir={out_dir}", "--json")
    assert again.rc == 0 and again.report["status"] == "unchanged", again.stderr


def test_report_with_fields_of_the_wrong_type_is_skipped(state_dir: Path) -> None:
    (state_dir / "runs" / OLD_RUN).mkdir(parents=True)
    (state_dir / "runs" / OLD_RUN / "report.json").write_text(json.dumps(
        {"run_id": OLD_RUN, "status": "successful", "stats": []}))
    res = run_cli("status")
    assert res.rc == 0, res.stderr
    assert "no runs recorded" in res.stdout
    assert "malformed run report" in res.stderr and "'stats'" in res.stderr


# -- the live status file in a directory others may control ----------------------------------


def _run_with_status(make_repo: Any, status_file: Path, out_dir: Path) -> Result:
    return run_cli("run", "--source", make_repo(web_tree()).url, "--role", "web",
                   "-e", f"out_dir={out_dir}", "--json",
                   env={"PULLBOOT_STATUS_FILE": str(status_file)})


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_status_dir_others_can_write_is_refused(mode: int, make_repo: Any, tmp_path: Path,
                                                out_dir: Path) -> None:
    shared = tmp_path / "run-pullboot"
    shared.mkdir()
    shared.chmod(mode)
    res = _run_with_status(make_repo, shared / "status.json", out_dir)
    assert res.rc == 0, res.stderr  # the live status never fails a run
    assert f"cannot write the status file {shared / 'status.json'}" in res.stderr
    assert "writable by others" in res.stderr and "chmod go-w" in res.stderr
    assert list(shared.iterdir()) == [], "nothing written there, not even a temp file"


def test_status_dir_owned_by_someone_else_is_refused(make_repo: Any, tmp_path: Path,
                                                     out_dir: Path) -> None:
    shared = tmp_path / "run-pullboot"
    shared.mkdir(mode=0o755)
    os.chown(shared, 65534, 65534)  # the tests run as root, like pullboot at boot
    res = _run_with_status(make_repo, shared / "status.json", out_dir)
    assert res.rc == 0, res.stderr
    assert "owned by uid 65534" in res.stderr
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize("mode", [0o755, 0o1777])
def test_symlinks_at_the_status_file_or_a_temp_name_are_not_followed(mode: int, make_repo: Any,
                                                             tmp_path: Path,
                                                             out_dir: Path) -> None:
    shared = tmp_path / "run-pullboot"
    shared.mkdir()
    shared.chmod(mode)  # 1777: others may create names, but not replace ours
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    victim.chmod(0o600)
    (shared / "status.json").symlink_to(victim)
    # And at every temp name a writer with a predictable name (pid-based) could use.
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(1, pid_max + 1):
        (shared / f".status.json.{pid}.tmp").symlink_to(victim)
    res = _run_with_status(make_repo, shared / "status.json", out_dir)
    assert res.rc == 0, res.stderr
    assert victim.read_text() == "root's file\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600, "chmod must not follow the link"
    status = shared / "status.json"
    assert not status.is_symlink() and json.loads(status.read_text())["status"] == "successful"
    assert stat.S_IMODE(status.stat().st_mode) == 0o644


def test_status_reader_does_not_follow_a_symlink(tmp_path: Path, state_dir: Path) -> None:
    (state_dir / "runs" / GOOD_RUN).mkdir(parents=True)
    (state_dir / "runs" / GOOD_RUN / "report.json").write_text(json.dumps(GOOD_REPORT))
    elsewhere = tmp_path / "forged.json"
    elsewhere.write_text(json.dumps({"status": "running", "run_id": "forged", "pid": 1}))
    (tmp_path / "status.json").symlink_to(elsewhere)
    res = run_cli("status")
    assert res.rc == 0, res.stderr
    assert "forged" not in res.stdout
    assert "not followed" in res.stderr


def test_state_dir_others_can_write_is_a_clear_error(make_repo: Any, state_dir: Path,
                                                     out_dir: Path) -> None:
    state_dir.mkdir()
    state_dir.chmod(0o777)
    # The run lock is taken (and truncated) before anything else is written there.
    victim = state_dir.parent / "victim"
    victim.write_text("root's file\n")
    (state_dir / "lock").symlink_to(victim)
    res = run_cli("run", "--source", make_repo(web_tree()).url, "--role", "web",
                  "-e", f"out_dir={out_dir}")
    assert res.rc == 2
    assert f"{state_dir} is writable by others" in res.stderr and "Traceback" not in res.stderr
    assert victim.read_text() == "root's file\n"
    assert not (state_dir / "releases").exists() or not list((state_dir / "releases").iterdir())


@pytest.mark.parametrize("mode", [0o777, 0o1777])
def test_status_file_pullboot_did_not_write_is_ignored(mode: int, tmp_path: Path) -> None:
    """A forged "finished" in a dir others can write never ends ``status --wait``."""
    shared = tmp_path / "run-pullboot"
    shared.mkdir()
    shared.chmod(mode)
    forged = shared / "status.json"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    forged.write_text(json.dumps({"status": "successful", "exit_code": 0, "run_id": "forged",
                                  "boot_id": boot_id, "pid": 1}))
    os.chown(forged, 65534, 65534)  # written by someone else (the tests run as root)
    res = run_cli("status", "--wait", "--timeout", "1",
                  env={"PULLBOOT_STATUS_FILE": str(forged)})
    assert res.rc == 5, (res.stdout, res.stderr)  # waited in vain: nothing pullboot wrote
    assert "forged" not in res.stdout
    assert _warned(res, forged), res.stderr
