"""The state dir: release ids, the current pointer, commits, cleanup and pruning."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pullboot.state import StateDir, new_run_id, release_id

SAFE = re.compile(r"^[A-Za-z0-9._+-]+$")


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    sd = StateDir(tmp_path / "state")
    sd.prepare()
    return sd


def _staged(state: StateDir, files: dict[str, str]) -> Path:
    path = state.staging()
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


# -- ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "revision", "expected"), [
    ("git", "3f9c2e1d" * 5, "git-" + "3f9c2e1d" * 5),
    ("git", "a" * 64, "git-" + "a" * 64),  # a sha256 commit id is kept whole
    ("s3", "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo",
     "s3-3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo"),
    ("s3", "v1+v2", "s3-v1+v2"),
    ("dir", "../../etc/passwd", "dir-.._.._etc_passwd"),
    ("git", "refs/heads/main", "git-refs_heads_main"),
    ("s3", 'etag "x" ;rm', "s3-etag__x___rm"),
])
def test_release_id_sanitises(kind: str, revision: str, expected: str) -> None:
    rid = release_id(kind, revision)
    assert rid == expected
    assert SAFE.fullmatch(rid)
    assert "/" not in rid


def test_release_id_bounds_long_revisions_and_keeps_them_distinct() -> None:
    a = release_id("s3", "v" * 300 + "a")
    b = release_id("s3", "v" * 300 + "b")
    assert a != b
    assert len(a) == len(b) <= 3 + 64
    assert SAFE.fullmatch(a)
    assert a == release_id("s3", "v" * 300 + "a")  # deterministic
    assert a.startswith("s3-" + "v" * 40 + "-")


def test_new_run_id_sorts_by_time() -> None:
    early = new_run_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = new_run_id(datetime(2026, 11, 28, 4, 25, 0, tzinfo=UTC))
    assert re.fullmatch(r"20260102T030405Z-[0-9a-f]{6}", early)
    assert early < late
    assert new_run_id() != new_run_id()


# -- releases and current ------------------------------------------------------------------


def test_switch_current_and_current_release(state: StateDir) -> None:
    assert state.current_release() is None
    state.commit_release(_staged(state, {"site.yml": "a"}), "git-aaa")
    state.commit_release(_staged(state, {"site.yml": "b"}), "git-bbb")
    state.switch_current("git-aaa")
    assert state.current_release() == "git-aaa"
    assert os.readlink(state.current) == "releases/git-aaa"  # relative: survives a move
    assert (state.current / "site.yml").read_text() == "a"
    state.switch_current("git-bbb")
    assert state.current_release() == "git-bbb"
    assert (state.current / "site.yml").read_text() == "b"
    assert [p.name for p in state.root.iterdir() if p.name.startswith(".current")] == []


def test_current_pointing_at_a_missing_release_is_none(state: StateDir) -> None:
    state.switch_current("git-gone")
    assert state.current.is_symlink()
    assert state.current_release() is None


def test_commit_release_moves_staging_into_place(state: StateDir) -> None:
    staging = _staged(state, {"playbooks/web.yml": "web", "roles/x/tasks/main.yml": "x"})
    target = state.commit_release(staging, "git-abc")
    assert target == state.releases / "git-abc"
    assert not staging.exists()
    assert (target / "playbooks/web.yml").read_text() == "web"
    assert (target / "roles/x/tasks/main.yml").read_text() == "x"


def test_commit_release_is_idempotent(state: StateDir) -> None:
    first = state.commit_release(_staged(state, {"site.yml": "first"}), "git-abc")
    second_staging = _staged(state, {"site.yml": "second"})
    second = state.commit_release(second_staging, "git-abc")
    assert second == first
    assert (first / "site.yml").read_text() == "first"
    assert not second_staging.exists()
    assert [p.name for p in state.releases.iterdir()] == ["git-abc"]


def test_clean_leftovers(state: StateDir) -> None:
    state.commit_release(_staged(state, {"site.yml": "ok"}), "git-abc")
    state.switch_current("git-abc")
    _staged(state, {"half/written.yml": "x"})
    (state.root / ".current-999").symlink_to("releases/git-abc")
    (state.root / ".current-1000").symlink_to("releases/nowhere")
    state.clean_leftovers()
    assert sorted(p.name for p in state.releases.iterdir()) == ["git-abc"]
    assert sorted(p.name for p in state.root.iterdir()) == [
        "cache", "current", "releases", "runner", "runs"]
    assert state.current_release() == "git-abc"


def _releases_with_ages(state: StateDir, names: list[str]) -> None:
    # names[0] is the oldest.
    for age, name in enumerate(names):
        state.commit_release(_staged(state, {"site.yml": name}), name)
        os.utime(state.releases / name, (1_700_000_000 + age * 60,) * 2)


def test_prune_releases_keeps_newest_and_protected(state: StateDir) -> None:
    _releases_with_ages(state, ["git-1", "git-2", "git-3", "git-4", "git-5"])
    staging = _staged(state, {"x": "y"})
    state.prune_releases(2, protect={"git-1"})
    assert sorted(p.name for p in state.releases.iterdir() if not p.name.startswith(".")) == [
        "git-1", "git-4", "git-5"]
    assert staging.exists()  # in-progress staging dirs are not releases


def test_prune_releases_keeps_at_least_one(state: StateDir) -> None:
    _releases_with_ages(state, ["git-1", "git-2"])
    state.prune_releases(0, protect=set())
    assert [p.name for p in state.releases.iterdir()] == ["git-2"]


@pytest.mark.parametrize(("keep", "kept"), [(2, 2), (0, 1), (10, 5)])
def test_prune_runs_keeps_newest(state: StateDir, keep: int, kept: int) -> None:
    # Created in this order while the clock jumps around: the last created are
    # the newest, whatever their timestamps say.
    ids = [new_run_id(datetime(2026, 11, day, 4, 25, tzinfo=UTC)) for day in (3, 1, 5, 2, 4)]
    for rid in ids:
        (state.run_dir(rid) / "report.json").write_text("{}")
    state.prune_runs(keep)
    assert sorted(p.name for p in state.runs.iterdir()) == sorted(ids[len(ids) - kept:])


def test_reports_follow_creation_order_not_the_clock(state: StateDir) -> None:
    late = new_run_id(datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    early = new_run_id(datetime(2026, 1, 1, 0, 0, tzinfo=UTC))  # the clock jumped back
    for rid in (late, early):
        (state.run_dir(rid) / "report.json").write_text(f'{{"run_id": "{rid}"}}')
    assert [r["run_id"] for r in state.reports()] == [early, late]
    state.prune_runs(1)
    assert [p.name for p in state.runs.iterdir()] == [early]
