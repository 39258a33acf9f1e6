"""ansible-runner's pexpect child without pexpect's interactive sleeps (no timing here)."""

from __future__ import annotations

import pexpect
import pytest

from pullboot.runner import _prompt_pty


def test_spawn_inside_has_no_sleeps_and_still_reads_to_eof() -> None:
    original = pexpect.spawn
    with _prompt_pty():
        assert pexpect.spawn is not original
        child = pexpect.spawn("echo", ["hello"], encoding="utf-8")
        child.expect(pexpect.EOF)
        assert "hello" in (child.before or "")
        assert child.delayafterread is None
        assert child.ptyproc.delayafterclose == 0
        child.close()
        assert child.exitstatus == 0
    assert pexpect.spawn is original


def test_original_spawn_restored_after_an_error() -> None:
    original = pexpect.spawn
    with pytest.raises(RuntimeError), _prompt_pty():
        raise RuntimeError("ansible-runner failed")
    assert pexpect.spawn is original
