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
    assert "more than 4 members" in exc.message
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


# -- link attacks that the per-member lexical checks alone let through (issue 12) ------------


def _chain(depth: int) -> list[Member]:
    # a/u0 -> .., a/u0/u1 -> .., ...: each looks inside on its own; through the chain, the
    # last one is `depth` levels above dest (Python 3.11.2 without filters wrote through it).
    members, path = [_dir("a")], "a"
    for k in range(depth):
        path += f"/u{k}"
        members.append(_link(path, ".."))
    return [*members, _file(path + "/escaped", b"pwned")]


ATTACKS: dict[str, tuple[list[Member], str]] = {
    "symlink-chain": (_chain(4), "lies under the link 'a/u0'"),
    "link-then-file-through-it": (
        [_dir("sub"), _link("l", "sub"), _file("l/f", b"x")], "lies under the link 'l'"),
    "later-link-moves-earlier-link-out": (
        [_dir("a"), _dir("a/b"), _link("a/b/l", "d/../.."), _link("a/b/d", "..")],
        "link 'a/b/l' points outside"),
    "link-through-link-out": (
        [_dir("a"), _link("a/up", ".."), _link("a/x", "up/..")], "link 'a/x' points outside"),
    "link-loop": ([_link("l1", "l2"), _link("l2", "l1")], "points outside"),
    "empty-link-target": ([_link("l", "")], "points outside"),
    "hardlink-through-symlink": (
        [_file("f"), _link("l", "."), _link("h", "l/f", hard=True)], "does not name a regular"),
    "hardlink-to-dir": ([_dir("d"), _link("h", "d", hard=True)], "does not name a regular"),
    "hardlink-to-later-member": (
        [_link("h", "f", hard=True), _file("f")], "does not name a regular"),
    "dir-replaced-by-link": (
        [_dir("a"), _file("a/f"), _link("a", "b")], "would replace a directory with a link"),
    "file-replaced-by-dir": ([_file("a"), _dir("a")], "would replace a file with a directory"),
    "member-under-a-file": ([_file("a"), _file("a/b")], "lies under the file 'a'"),
    "duplicate-file": ([_file("a"), _file("./a", b"other")], "appears twice"),
    "link-replaces-file": ([_file("a"), _link("a", "b")], "appears twice"),
    "file-replaces-root": ([_file(".")], "would replace the bundle's root"),
    "name-over-limit": ([_file("d/" + "n" * 5000)], "of 5002 bytes (limit 4096)"),
    "link-target-over-limit": ([_link("l", "t/" * 2100)], "link target of 4200 bytes"),
    "non-utf8-name": ([_file("caf\udce9.yml")], "member name that is not UTF-8"),
    "fifo": ([_special("pipe", tarfile.FIFOTYPE)], "device or special file"),
    "chardev": ([_special("zero", tarfile.CHRTYPE)], "device or special file"),
    "sparse": ([_special("sparse", tarfile.GNUTYPE_SPARSE)], "is a sparse file"),
}


def _attack_tar(tmp_path: Path, case: str) -> Path:
    return _tar(tmp_path / f"{case}.tar", ATTACKS[case][0], "w")


@pytest.mark.parametrize("case", sorted(ATTACKS))
def test_link_and_name_attacks_are_refused(tmp_path: Path, box: tuple[Path, Path],
                                           case: str) -> None:
    exc = _refused(_attack_tar(tmp_path, case), box)
    assert ATTACKS[case][1] in exc.message
    assert exc.hint
    assert not list(box[0].rglob("escaped"))


def test_no_extraction_filter_is_needed(tmp_path: Path, box: tuple[Path, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The interpreter the AMI has may lack the filters (3.11.2): take them away here, and
    # tarfile's own extraction with them, so this runs the same path on any Python.
    for attr in ("data_filter", "tar_filter", "fully_trusted_filter"):
        monkeypatch.delattr(tarfile, attr, raising=False)

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("tarfile extraction used")

    monkeypatch.setattr(tarfile.TarFile, "extractall", refuse)
    monkeypatch.setattr(tarfile.TarFile, "extract", refuse)
    assert "lies under the link" in _refused(_attack_tar(tmp_path, "symlink-chain"), box).message
    good = _tar(tmp_path / "good.tar", [_dir("p"), _file("p/web.yml"), _link("site.yml",
                                                                            "p/web.yml")])
    extract(good, tmp_path / "ok", name="good.tar")
    assert (tmp_path / "ok" / "site.yml").read_bytes() == PLAY


def test_modes_are_reduced_as_the_data_filter_would(tmp_path: Path) -> None:
    setuid, _ = _file("bin/tool", b"#!/bin/sh\n")
    setuid.mode = 0o6777
    plain, _ = _file("plain.yml")
    plain.mode = 0o666
    archive = _tar(tmp_path / "b.tar", [(setuid, b"#!/bin/sh\n"), (plain, PLAY)], "w")
    extract(archive, tmp_path / "dest", name="b.tar")
    assert stat.S_IMODE((tmp_path / "dest/bin/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "dest/plain.yml").stat().st_mode) == 0o644


def test_a_second_bundle_cannot_use_the_first_ones_links(tmp_path: Path,
                                                         box: tuple[Path, Path]) -> None:
    # Role bundles are extracted into one tree: links already on disk count as members.
    dest = box[1]
    extract(_tar(tmp_path / "one.tar", [_dir("sub"), _link("d", "sub"), _dir("a"),
                                        _dir("a/b"), _link("a/b/l", "x/../..")], "w"),
            dest, name="one.tar")
    through = _tar(tmp_path / "two.tar", [_file("d/f")], "w")
    assert "lies under the link 'd'" in _refused(through, box).message
    moves = _tar(tmp_path / "three.tar", [_link("a/b/x", "..")], "w")
    assert "link 'a/b/l' points outside" in _refused(moves, box).message
    zipped = _zip(tmp_path / "four.zip", {"d/g": b"x"})
    assert "lies under the link 'd'" in _refused(zipped, box).message
    again = _tar(tmp_path / "five.tar", [_file("sub/f"), _link("d", "sub/f")], "w")
    extract(again, dest, name="five.tar")  # replacing a file or link of an earlier bundle
    assert (dest / "d").read_bytes() == PLAY


def test_unsafe_zip_trees(tmp_path: Path, box: tuple[Path, Path]) -> None:
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf, pytest.warns(UserWarning, match="Duplicate"):
        zf.writestr("a", b"1")
        zf.writestr("a", b"2")
    assert "appears twice" in _refused(dup, box).message
    assert "lies under the file 'a'" in _refused(
        _zip(tmp_path / "under.zip", {"a": b"1", "a/b": b"2"}), box).message


# -- bounded headers (class 2): refused before tarfile reads them --------------------------


def _raw_header(name: bytes, kind: bytes, size: int) -> bytes:
    """One ustar header block (size may be negative: base-256 encoded, as GNU tar can)."""
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    if size >= 0:
        block[124:136] = b"%011o\0" % size
    else:
        block[124:136] = bytes([0xFF]) + (size % (1 << 88)).to_bytes(11, "big")
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:265] = b"ustar  \0"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_long_name_header_over_the_bound_is_refused(tmp_path: Path,
                                                    box: tuple[Path, Path]) -> None:
    archive = tmp_path / "long.tar"
    archive.write_bytes(_raw_header(b"././@LongLink", b"L", 1 << 20) + b"a" * (1 << 20)
                        + b"\0" * 1024)
    assert "extended header of 1048576 bytes (limit 65536)" in _refused(archive, box).message


def test_pax_header_over_the_bound_is_refused(tmp_path: Path, box: tuple[Path, Path]) -> None:
    archive = tmp_path / "pax.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("site.yml")
        info.pax_headers = {"comment": "c" * 100_000}
        tar.addfile(info, io.BytesIO(b""))
    assert "extended header of" in _refused(archive, box).message


def test_chain_of_extended_headers_is_refused(tmp_path: Path, box: tuple[Path, Path]) -> None:
    # Unbounded, tarfile recurses once per header: a RecursionError traceback.
    one = _raw_header(b"././@LongLink", b"L", 512) + b"n" * 511 + b"\0"
    archive = tmp_path / "chain.tar"
    archive.write_bytes(one * 5000 + _raw_header(b"f", b"0", 0) + b"\0" * 1024)
    assert "extended headers in a row" in _refused(archive, box).message


def test_negative_size_is_refused(tmp_path: Path, box: tuple[Path, Path]) -> None:
    # tarfile would step backwards through the archive forever.
    archive = tmp_path / "neg.tar"
    archive.write_bytes(_raw_header(b"f", b"0", -512) + b"\0" * 2048)
    assert "negative size" in _refused(archive, box).message


def test_negative_size_from_a_pax_record_is_refused(tmp_path: Path,
                                                    box: tuple[Path, Path]) -> None:
    archive = tmp_path / "pax-neg.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"size": "-1024"}
        tar.addfile(info, io.BytesIO(b""))
    assert "negative size" in _refused(archive, box).message
