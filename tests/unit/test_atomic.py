"""The one atomic writer and tolerant reader (pullboot/atomic.py) on their own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pullboot.atomic import read_json, write_atomic, write_json_atomic
from pullboot.errors import UnsafeDirError


def test_write_sets_the_mode_whatever_the_umask_and_leaves_no_temp(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    old = os.umask(0o077)
    try:
        write_atomic(d / "f", b"one", mode=0o644)
        write_atomic(d / "f", b"two", mode=0o644)
    finally:
        os.umask(old)
    assert (d / "f").read_bytes() == b"two"
    assert stat.S_IMODE((d / "f").stat().st_mode) == 0o644
    assert [p.name for p in d.iterdir()] == ["f"]


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "d").mkdir(mode=0o700)
    (tmp_path / "d" / "f.json").symlink_to(victim)
    write_json_atomic(tmp_path / "d" / "f.json", {"a": 1})
    assert victim.read_text() == "keep"
    assert not (tmp_path / "d" / "f.json").is_symlink()
    assert read_json(tmp_path / "d" / "f.json", dict) == {"a": 1}


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d").chmod(0o777)
    with pytest.raises(UnsafeDirError, match="writable by others"):
        write_atomic(tmp_path / "d" / "f", b"x")
    assert list((tmp_path / "d").iterdir()) == []


@pytest.mark.parametrize("content", [b"[]", b'{"a": ', b"\xff\xfe", b"[" * 100_000])
def test_reader_gives_none_for_damaged_content(tmp_path: Path, content: bytes,
                                               caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "f.json").write_bytes(content)
    assert read_json(tmp_path / "f.json", dict, what="thing") is None
    assert f"unreadable thing {tmp_path / 'f.json'}" in caplog.text


def test_reader_is_quiet_for_a_missing_file(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    assert read_json(tmp_path / "nope.json", dict) is None
    assert caplog.text == ""
