"""parse_user_data from fixture files: tests/fixtures/userdata/<case>.<ext> + expected.yaml."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pullboot import errors
from pullboot.userdata import MAX_EXPANDED, parse_user_data
from pullboot.userdata_template import V1_NAMES, template_vars

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "userdata"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load(
    (FIXTURES / "expected.yaml").read_text(encoding="utf-8"))
EC2_USER_DATA_MAX = 16 * 1024


def _read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _pad_16k(name: str) -> bytes:
    tail = _read(name)
    head = b"#cloud-config\n"
    line = b"# " + b"padding " * 9 + b"\n"
    body = head
    while len(body) + len(line) + len(tail) <= EC2_USER_DATA_MAX:
        body += line
    body += b"#" * (EC2_USER_DATA_MAX - len(body) - len(tail) - 1) + b"\n"
    data = body + tail
    assert len(data) == EC2_USER_DATA_MAX
    assert data.rstrip().endswith(tail.rstrip())
    return data


def _gzip_bomb(name: str) -> bytes:
    # Still valid YAML holding our section: only the size can make it None.
    return gzip.compress(_read(name) + b"\n" * (2 * MAX_EXPANDED), mtime=0)


def _mime_parts(count: int) -> bytes:
    """A multipart user-data with ``count`` parts, the last one ours."""
    parts = [b"#!/bin/sh\necho part\n"] * (count - 1) + [_read("plain.yaml")]
    body = b"".join(b"--B\nContent-Type: text/plain\n\n" + p for p in parts)
    return b'Content-Type: multipart/mixed; boundary="B"\nMIME-Version: 1.0\n\n' + body + b"--B--\n"


def _archive_parts(count: int) -> bytes:
    """A #cloud-config-archive with ``count`` parts, the last one ours."""
    entries = [{"type": "text/x-shellscript", "content": "#!/bin/sh\n"}] * (count - 1)
    entries.append({"type": "text/cloud-config", "content": _read("plain.yaml").decode()})
    return b"#cloud-config-archive\n" + yaml.safe_dump(entries).encode()


def _gzip_layers(count: int) -> bytes:
    data = _read("plain.yaml")
    for _ in range(count):
        data = gzip.compress(data, mtime=0)
    return data


BUILDERS: dict[str, Callable[[Any], bytes | None]] = {
    "deep": lambda depth: b"pullboot: {vars: " + b"[" * depth + b"}\n",
    "mime_parts": _mime_parts,
    "gzip_layers": _gzip_layers,
    "archive_parts": _archive_parts,
    "jinja_deep": lambda depth: (b"## template: jinja\npullboot: {ref: '{{ " + b"(" * depth
                                 + b"v1.region" + b")" * depth + b" }}'}\n"),
    "jinja_big": lambda size: (b"## template: jinja\n#cloud-config\npullboot: {role: web}\n"
                               + b"#" * size + b"\n"),
    "gzip": lambda name: gzip.compress(_read(name), mtime=0),
    "gzip_bomb": _gzip_bomb,
    "gzip_truncated": lambda name: gzip.compress(_read(name), mtime=0)[:-12],
    "pad_16k": _pad_16k,
    # Not UTF-8, no gzip magic, not MIME: an encrypted blob or a mis-pasted binary.
    "garbage": lambda _: bytes(range(0x80, 0x100)) + bytes(range(0x00, 0x80)),
    "nul_suffix": lambda name: _read(name) + b"\x00\x00",
    "empty": lambda _: b"",
    "none": lambda _: None,
}


def _input(case: str) -> bytes | None:
    spec = EXPECTED[case]
    if "build" in spec:
        builder, arg = spec["build"]
        return BUILDERS[builder](arg)
    (path,) = [p for p in FIXTURES.iterdir() if p.stem == case and p.name != "expected.yaml"]
    return path.read_bytes()


def test_every_fixture_file_has_an_expected_outcome() -> None:
    stems = {p.stem for p in FIXTURES.iterdir() if p.name != "expected.yaml"}
    built = {case for case, spec in EXPECTED.items() if "build" in spec}
    assert stems == set(EXPECTED) - built
    assert {spec["build"][0] for spec in EXPECTED.values() if "build" in spec} <= set(BUILDERS)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_parse_user_data(case: str) -> None:
    spec = EXPECTED[case]
    raw = _input(case)
    variables = template_vars(**spec["instance"]) if "instance" in spec else None
    if "error" in spec:
        with pytest.raises(getattr(errors, spec["error"])) as info:
            parse_user_data(raw, variables=variables)
        assert spec["match"] in info.value.message
        assert spec.get("hint", "pullboot: {role: web}") in (info.value.hint or "")
    else:
        assert parse_user_data(raw, variables=variables) == spec["expect"]


def test_gzip_bomb_really_exceeds_the_limit_and_a_small_gzip_does_not() -> None:
    # Guards the fixture: the bomb must be small on the wire but large inflated.
    bomb = _gzip_bomb("plain.yaml")
    assert len(bomb) < EC2_USER_DATA_MAX
    assert len(gzip.decompress(bomb)) > MAX_EXPANDED
    assert parse_user_data(gzip.compress(_read("plain.yaml"))) == {"role": "web"}


def test_returned_section_is_a_copy() -> None:
    first = parse_user_data(_read("plain.yaml"))
    assert first is not None
    first["role"] = "changed"
    assert parse_user_data(_read("plain.yaml")) == {"role": "web"}


def test_raw_user_data_is_never_logged(caplog: pytest.LogCaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # cli.main() turns propagation off; caplog listens on the root logger.
    monkeypatch.setattr(logging.getLogger("pullboot"), "propagate", True)
    caplog.set_level("DEBUG", logger="pullboot")
    secret = b"#cloud-config\nchpasswd: {list: 'root:S3cr3t-pw'}\npullboot: [broken\n"
    assert parse_user_data(secret) is None
    assert "not YAML or JSON" in caplog.text  # the warning was captured ...
    assert "S3cr3t-pw" not in caplog.text  # ... and holds no user-data


def test_include_is_counted_and_warned_about_never_fetched_or_logged(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("pullboot"), "propagate", True)
    caplog.set_level("DEBUG", logger="pullboot")
    mime = (b'From nobody Tue Dec  1 22:00:00 2026\nContent-Type: multipart/mixed; boundary="B"\n'
            b"MIME-Version: 1.0\n\n--B\nContent-Type: text/x-include-url\n\n"
            b"https://h.invalid/a?sig=S3CRET\n--B\nContent-Type: text/plain\n\n"
            + _read("include.txt") + b"--B\nContent-Type: text/plain\n\n"
            + _read("plain.yaml") + b"--B--\n")
    assert parse_user_data(mime) == {"role": "web"}
    assert "user-data has 2 #include part(s); pullboot does not fetch" in caplog.text
    assert "S3CRET" not in caplog.text and "invalid" not in caplog.text


def test_archive_and_template_parts_inside_mime_by_content_type() -> None:
    template = "#cloud-config\npullboot: {role: web, ref: '{{ v1.region }}'}\n"
    archive = ("- {type: text/cloud-config, content: 'pullboot: {roles: [api]}',\n"
               "   Merge-Type: 'dict(no_replace)+list(append)'}\n")
    mime = (b'Content-Type: multipart/mixed; boundary="B"\nMIME-Version: 1.0\n\n'
            b"--B\nContent-Type: text/jinja2\n\n" + template.encode()
            + b"--B\nContent-Type: text/cloud-config-archive\n"
            b"Merge-Type: dict(no_replace)+list(append)\n\n" + archive.encode() + b"--B--\n")
    variables = template_vars(instance_id="i-1", region="eu-west-1", availability_zone=None,
                              hostname="web-1")
    # The archive entry's Merge-Type key is its header (as in cloud-init): merged, not replaced.
    assert parse_user_data(mime, variables=variables) == {"role": "web", "ref": "eu-west-1",
                                                          "roles": ["api"]}


def test_template_vars_are_cloud_inits_v1_names_and_the_error_lists_them() -> None:
    full = template_vars(instance_id="i-1", region="r", availability_zone="z", hostname="h")
    assert set(full["v1"]) == set(V1_NAMES)
    assert {k: full[k] for k in V1_NAMES} == full["v1"]  # top-level aliases, as cloud-init
    assert "region" not in template_vars(instance_id="i-1", region=None,
                                         availability_zone=None, hostname="h")["v1"]
