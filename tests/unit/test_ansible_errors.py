"""ansible's play-level error text -> the report's error (message and origin), bounded, redacted."""

from __future__ import annotations

from pathlib import Path

from pullboot.events import (
    MAX_ERROR_TEXT,
    MAX_MESSAGE,
    REDACTED,
    EventRecorder,
    Redactor,
    ansible_error,
)

NEW_STYLE = """\
[WARNING]: something unrelated
[ERROR]: 'bogus_attr' is not a valid attribute for a Play
Origin: /rel/tree/playbooks/web.yml:3:3

1 - hosts: all
3   bogus_attr: 1
    ^ column 3
"""

OLD_STYLE = """\
ERROR! 'bogus_attr' is not a valid attribute for a Play

The error appears to be in '/rel/tree/playbooks/web.yml': line 1, column 3, but may
be elsewhere in the file depending on the exact syntax problem.
"""


def _verbose(rec: EventRecorder, text: str) -> None:
    for line in text.splitlines():
        rec({"event": "verbose", "stdout": line, "event_data": {}})


def test_new_style_message_and_origin_relative_to_the_tree() -> None:
    found = ansible_error(NEW_STYLE, tree=Path("/rel/tree"))
    assert found is not None
    assert found.message == "'bogus_attr' is not a valid attribute for a Play"
    assert found.origin == "playbooks/web.yml:3:3"


def test_old_style_message_and_origin() -> None:
    found = ansible_error(OLD_STYLE, tree=Path("/rel/tree"))
    assert found is not None
    assert found.message == "'bogus_attr' is not a valid attribute for a Play"
    assert found.origin == "playbooks/web.yml:1:3"


def test_multi_line_message_is_joined_and_origin_without_line_kept() -> None:
    text = "[ERROR]: Invalid vars_files file 'v.yml':\nno vault secrets found.\nOrigin: /x/v.yml\n"
    found = ansible_error(text)
    assert found is not None
    assert found.message == "Invalid vars_files file 'v.yml': no vault secrets found."
    assert found.origin == "/x/v.yml"


def test_ansi_colours_are_stripped() -> None:
    found = ansible_error("\x1b[0;31m[ERROR]: boom\x1b[0m\n\x1b[0;31mOrigin: /t/a.yml:2:1\x1b[0m")
    assert found is not None and (found.message, found.origin) == ("boom", "/t/a.yml:2:1")


def test_no_error_line_is_none() -> None:
    assert ansible_error("[WARNING]: only a warning\nPLAY [all]\n") is None


def test_recorder_keeps_error_text_from_the_first_error_line(tmp_path: Path) -> None:
    with EventRecorder(tmp_path / "e.jsonl") as rec:
        _verbose(rec, NEW_STYLE)
    assert rec.error_text.startswith("[ERROR]: 'bogus_attr'")
    assert "[WARNING]" not in rec.error_text


def test_recorder_bounds_error_text_and_message(tmp_path: Path) -> None:
    with EventRecorder(tmp_path / "e.jsonl") as rec:
        _verbose(rec, "[ERROR]: " + "x" * 10_000 + "\n" + ("more\n" * 5_000))
    assert len(rec.error_text) <= MAX_ERROR_TEXT
    found = ansible_error(rec.error_text)
    assert found is not None and len(found.message) <= MAX_MESSAGE + 3


def test_recorder_redacts_error_text(tmp_path: Path) -> None:
    secret = "s3cr3t-vault-pw"
    with EventRecorder(tmp_path / "e.jsonl", redact=Redactor([secret])) as rec:
        _verbose(rec, f"[ERROR]: bad value {secret} here\nOrigin: /t/a.yml:1:1\n")
    assert secret not in rec.error_text and REDACTED in rec.error_text


def test_origin_after_a_caused_by_chain() -> None:
    text = ("[ERROR]: Invalid vars_files file '/t/v.yml': no vault secrets found.\n\n"
            "Invalid vars_files file '/t/v.yml'.\n\n<<< caused by >>>\n\n"
            "no vault secrets found.\nOrigin: /t/v.yml\n\n[ERROR]: next\nOrigin: /t/b.yml:1:1\n")
    found = ansible_error(text, tree=Path("/t"))
    assert found is not None
    assert found.message == "Invalid vars_files file '/t/v.yml': no vault secrets found."
    assert found.origin == "v.yml"


def test_recorder_keeps_the_last_error_block(tmp_path: Path) -> None:
    with EventRecorder(tmp_path / "e.jsonl") as rec:
        _verbose(rec, "[ERROR]: survived\nOrigin: /t/a.yml:1:1\n[WARNING]: w\n" + NEW_STYLE)
    found = ansible_error(rec.error_text, tree=Path("/rel/tree"))
    assert found is not None and found.origin == "playbooks/web.yml:3:3"
    assert "survived" not in rec.error_text
