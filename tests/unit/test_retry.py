"""The one retry loop and its deadline (pullboot/retry.py), on virtual time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pullboot.retry import Backoff, Deadline, retry
from pullboot.sources.git import clear_stale_locks


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky(Exception):
    pass


def test_retries_until_success_with_capped_jittered_backoff() -> None:
    clock = Clock()
    calls: list[int] = []

    def attempt(n: int) -> str:
        calls.append(n)
        if n < 6:
            raise Flaky
        return "ok"

    deadline = Deadline.after(1000, clock=clock, sleep=clock.sleep)
    assert retry(attempt, retryable=lambda e: isinstance(e, Flaky), deadline=deadline,
                 backoff=Backoff(base=1, cap=3), what="x") == "ok"
    assert calls == [1, 2, 3, 4, 5, 6]
    assert all(0 <= s <= 3 for s in clock.sleeps)


def test_not_retryable_propagates_at_once() -> None:
    clock = Clock()

    def attempt(n: int) -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError):
        retry(attempt, retryable=lambda e: isinstance(e, Flaky),
              deadline=Deadline.after(100, clock=clock, sleep=clock.sleep),
              backoff=Backoff(), what="x")
    assert clock.sleeps == []


def test_gives_up_at_the_deadline_with_the_last_error() -> None:
    clock = Clock()

    def attempt(n: int) -> None:
        raise Flaky(n)

    with pytest.raises(Flaky):
        retry(attempt, retryable=lambda e: True,
              deadline=Deadline.after(30, clock=clock, sleep=clock.sleep),
              backoff=Backoff(base=1, cap=4), what="x")
    assert 30 <= clock.now <= 30.001, "waits are cut at the deadline, none after it"


def test_cancel_ends_the_wait_at_once() -> None:
    cancel = threading.Event()
    tries: list[int] = []

    def attempt(n: int) -> None:
        tries.append(n)
        cancel.set()  # SIGTERM arrives during the first try
        raise Flaky

    started = time.monotonic()
    with pytest.raises(Flaky):
        retry(attempt, retryable=lambda e: True, deadline=Deadline.after(600, cancel=cancel),
              backoff=Backoff(base=300, cap=300), what="x")
    assert tries == [1]
    assert time.monotonic() - started < 5


def test_deadline_within_takes_the_earlier_bound() -> None:
    clock = Clock()
    outer = Deadline.after(10, clock=clock)
    assert outer.within(3).left() == 3
    assert outer.within(30).left() == 10


def test_clear_stale_locks_removes_lock_files_but_never_follows_links(tmp_path: Path) -> None:
    git_dir = tmp_path / ".git"
    (git_dir / "refs" / "heads").mkdir(parents=True)
    (git_dir / "shallow.lock").write_text("")
    (git_dir / "refs" / "heads" / "main.lock").write_text("")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.lock").write_text("")
    (git_dir / "link").symlink_to(outside)
    (git_dir / "dangling.lock").symlink_to(outside / "keep.lock")
    removed = clear_stale_locks(git_dir)
    assert sorted(p.name for p in removed) == ["main.lock", "shallow.lock"]
    assert (outside / "keep.lock").exists()
    assert (git_dir / "dangling.lock").is_symlink()
