"""Safe bundle extraction: archives built at test time in tmp_path."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from pullboot.archive import Limits, extract
from pullboot.errors import IntegrityError, SourceError

PLAY = b"- hosts: all\n  tasks: []\n"

Member = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes = PLAY) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _dir(name: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def _link(name: str, target: str, *, hard: bool = False) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def _tar(path: Path, members: Iterable[Member], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _zip(path: Path, files: dict[str, bytes], *, mode: int = stat.S_IFREG | 0o644) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def _snapshot(root: Path, *, skip: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p != skip and skip not in p.parents}


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(dir holding the archive, dest two levels below it): escapes land in between."""
    dest = tmp_path / "box" / "sandbox" / "dest"
    dest.parent.mkdir(parents=True)
    return tmp_path, dest


def _refused(archive: Path, box: tuple[Path, Path], *, name: str | None = None,
             limits: Limits | None = None) -> IntegrityError:
    root, dest = box
    before = _snapshot(root, skip=dest)
    with pytest.raises(IntegrityError) as info:
        extract(archive, dest, name=name or archive.name, limits=limits or Limits())
    assert _snapshot(root, skip=dest) == before, "something was written outside dest"
    assert not (root / "etc").exists()
    return info.value


# -- good bundles ----------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "mode"), [
    ("tar.gz", "w:gz"), ("tgz", "w:gz"), ("tar", "w"), ("tar.bz2", "w:bz2"), ("tar.xz", "w:xz")])
def test_good_tar_extracts(tmp_path: Path, suffix: str, mode: str) -> None:
    # As `tar -C tree .` writes it: "./" prefixes, a dir entry, a relative link.
    archive = _tar(tmp_path / f"bundle.{suffix}", [
        _dir("."), _dir("./playbooks"), _file("./playbooks/web.yml"),
        _file("./roles/nginx/tasks/main.yml", b"- debug: msg=hi\n"),
        _link("./site.yml", "playbooks/web.yml"),
        _link("./roles/nginx/tasks/again.yml", "../tasks/main.yml"),
        _link("./playbooks/web-hard.yml", "playbooks/web.yml", hard=True),
    ], mode)
    dest = tmp_path / "dest"
    extract(archive, dest, name=f"web.{suffix}")
    assert (dest / "playbooks" / "web.yml").read_bytes() == PLAY
    assert (dest / "roles/nginx/tasks/main.yml").read_bytes() == b"- debug: msg=hi\n"
    assert (dest / "site.yml").is_symlink()
    assert (dest / "site.yml").read_bytes() == PLAY
    assert (dest / "roles/nginx/tasks/again.yml").read_bytes() == b"- debug: msg=hi\n"
    assert (dest / "playbooks" / "web-hard.yml").read_bytes() == PLAY


def test_good_zip_extracts(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bundle.zip", {
        "playbooks/web.yml": PLAY, "roles/nginx/tasks/main.yml": b"- debug: msg=hi\n"})
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo("empty-dir/")
        info.external_attr = (stat.S_IFDIR | 0o755) << 16
        zf.writestr(info, b"")
    dest = tmp_path / "dest"
    extract(archive, dest, name="Bundle.ZIP")
    assert (dest / "playbooks" / "web.yml").read_bytes() == PLAY
    assert (dest / "roles/nginx/tasks/main.yml").read_bytes() == b"- debug: msg=hi\n"
    assert (dest / "empty-dir").is_dir()


def test_zip_from_a_windows_tool_without_unix_mode_extracts(tmp_path: Path) -> None:
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("playbooks/web.yml")
        info.create_system = 0  # MS-DOS: only DOS attribute bits, no Unix mode
        info.external_attr = 0x20  # FILE_ATTRIBUTE_ARCHIVE
        zf.writestr(info, PLAY)
    extract(archive, tmp_path / "dest", name="bundle.zip")
    assert (tmp_path / "dest" / "playbooks" / "web.yml").read_bytes() == PLAY


def test_zip_written_by_python_writestr_extracts(tmp_path: Path) -> None:
    # zipfile.writestr(name, data) stores mode 0o600 without the file-type bits
    # (S_IFMT == 0), as do other producers: that is a regular file, not a link.
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("playbooks/web.yml", PLAY)
    assert stat.S_IFMT(zf.getinfo("playbooks/web.yml").external_attr >> 16) == 0
    extract(archive, tmp_path / "dest", name="bundle.zip")
    assert (tmp_path / "dest" / "playbooks" / "web.yml").read_bytes() == PLAY


# -- refused bundles -------------------------------------------------------------------


@pytest.mark.parametrize(("members", "match"), [
    ([_file("/etc/cron.d/evil")], "absolute member"),
    ([_file("playbooks/web.yml"), _file("../evil.yml")], "escaping the tree"),
    ([_file("playbooks/../../../evil.yml")], "escaping the tree"),
    ([_link("passwd", "/etc/passwd")], "points outside"),
    ([_link("escape", "a/../../x")], "points outside"),
    ([_dir("a"), _link("a/b", "../../x")], "points outside"),
    ([_file("x"), _link("hard", "../x", hard=True)], "points outside"),
    ([_link("hard", "/etc/passwd", hard=True)], "points outside"),
    ([_special("dev/null", tarfile.CHRTYPE)], "device or special file"),
    ([_special("dev/sda", tarfile.BLKTYPE)], "device or special file"),
    ([_special("pipe", tarfile.FIFOTYPE)], "device or special file"),
], ids=["absolute", "dotdot", "dotdot-deep", "symlink-abs", "symlink-up", "symlink-nested-up",
        "hardlink-up", "hardlink-abs", "chardev", "blockdev", "fifo"])
def test_unsafe_tar_is_refused_before_writing(tmp_path: Path, box: tuple[Path, Path],
                                              members: list[Member], match: str) -> None:
    archive = _tar(tmp_path / "bundle.tar.gz", members)
    exc = _refused(archive, box)
    assert match in exc.message
    assert "'bundle.tar.gz'" in exc.message
    dest = box[1]
    assert not dest.exists() or not any(dest.iterdir())


def test_symlink_chain_escape_is_refused(tmp_path: Path, box: tuple[Path, Path]) -> None:
    # Each link looks inside on its own; through the first link, the second leaves dest.
    archive = _tar(tmp_path / "bundle.tar.gz", [
        _dir("a"), _dir("a/b"), _link("a/b/l", "../.."), _link("a/b/l/m", "../x"),
        _file("a/b/l/m/evil", b"pwned")])
    _refused(archive, box)
    assert not (box[1].parent / "x").exists()


def test_too_many_members(tmp_path: Path, box: tuple[Path, Path]) -> None:
    archive = _tar(tmp_path / "bundle.tar.gz", [_file(f"f{i}.yml") for i in range(5)])
    exc = _refused(archive, box, limits=Limits(max_members=4))
    assert "5 members (limit 4)" in exc.message
    extract(archive, tmp_path / "ok", name="bundle.tar.gz", limits=Limits(max_members=5))


def test_too_large_tar(tmp_path: Path, box: tuple[Path, Path]) -> None:
    archive = _tar(tmp_path / "bundle.tar.gz", [_file("a", b"x" * 600), _file("b", b"y" * 600)])
    exc = _refused(archive, box, limits=Limits(max_bytes=1000))
    assert "1200 bytes (limit 1000)" in exc.message


def test_too_large_zip(tmp_path: Path, box: tuple[Path, Path]) -> None:
    archive = _zip(tmp_path / "bundle.zip", {"big": b"\0" * 5000})
    exc = _refused(archive, box, limits=Limits(max_bytes=1000))
    assert "limit 1000" in exc.message


def test_too_many_zip_members(tmp_path: Path, box: tuple[Path, Path]) -> None:
    archive = _zip(tmp_path / "bundle.zip", {f"f{i}": b"x" for i in range(3)})
    exc = _refused(archive, box, limits=Limits(max_members=2))
    assert "3 members (limit 2)" in exc.message


@pytest.mark.parametrize(("name", "match"), [
    ("/etc/cron.d/evil", "absolute member"),
    ("../evil", "escaping the tree"),
    ("C:/Windows/evil", "absolute member"),
])
def test_unsafe_zip_names(tmp_path: Path, box: tuple[Path, Path], name: str,
                          match: str) -> None:
    archive = _zip(tmp_path / "bundle.zip", {"ok.yml": PLAY, name: b"evil"})
    assert match in _refused(archive, box).message
    assert not box[1].exists()


def test_zip_with_symlink_attr(tmp_path: Path, box: tuple[Path, Path]) -> None:
    archive = _zip(tmp_path / "bundle.zip", {"passwd": b"/etc/passwd"},
                   mode=stat.S_IFLNK | 0o777)
    exc = _refused(archive, box)
    assert "link or special file 'passwd'" in exc.message
    assert ".tar.gz" in (exc.hint or "")


@pytest.mark.parametrize("kind", ["garbage", "truncated-tar", "truncated-zip"])
def test_corrupt_archive(tmp_path: Path, box: tuple[Path, Path], kind: str) -> None:
    if kind == "truncated-zip":
        good = _zip(tmp_path / "good.zip", {f"f{i}": bytes(range(256)) * 8 for i in range(4)})
        name = "bundle.zip"
    else:
        good = _tar(tmp_path / "good.tar.gz",
                    [_file(f"f{i}", bytes(range(256)) * 64) for i in range(8)])
        name = "bundle.tar.gz"
    data = good.read_bytes()
    good.unlink()
    archive = tmp_path / name
    archive.write_bytes(b"PK\x03\x04 not really" * 50 if kind == "garbage" else
                        data[: len(data) // 2])
    exc = _refused(archive, box, name=name)
    assert "corrupt" in exc.message
    assert isinstance(exc, SourceError)


@pytest.mark.parametrize("name", ["bundle.rar", "bundle.gz", "bundle", "bundle.tar.gz.sig"])
def test_unknown_extension(tmp_path: Path, box: tuple[Path, Path], name: str) -> None:
    archive = _tar(tmp_path / "bundle.tar.gz", [_file("site.yml")])
    exc = _refused(archive, box, name=name)
    assert f"{name!r} is not a .tar.gz" in exc.message
