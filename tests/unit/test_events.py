"""Event stream -> events.jsonl + summary, from tests/fixtures/events/failed_play.jsonl."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from pullboot.events import (
    MAX_MESSAGE,
    REDACTED,
    EventRecorder,
    Redactor,
    describe,
    failure_message,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "events"
EVENTS: list[dict[str, Any]] = [
    json.loads(line) for line in
    (FIXTURES / "failed_play.jsonl").read_text(encoding="utf-8").splitlines()]
SUMMARY: dict[str, Any] = yaml.safe_load(
    (FIXTURES / "failed_play.summary.yaml").read_text(encoding="utf-8"))
SECRET: str = SUMMARY["secrets"][0]


def _record(path: Path, *, secrets: list[str] | None = None,
            on_event: Any = None) -> tuple[EventRecorder, list[bool]]:
    returned = []
    with EventRecorder(path, redact=Redactor(secrets or []), on_event=on_event) as rec:
        for event in copy.deepcopy(EVENTS):
            returned.append(rec(event))
    return rec, returned


def test_fixture_is_a_realistic_stream() -> None:
    names = [e["event"] for e in EVENTS]
    assert names[0] == "playbook_on_start"
    assert names[-1] == "playbook_on_stats"
    assert [e["counter"] for e in EVENTS] == list(range(1, len(EVENTS) + 1))
    assert any("\x1b[" in e["stdout"] for e in EVENTS)
    assert EVENTS[11]["event_data"]["res"]["json"]["echo"]["Authorization"] == (
        f"Bearer {SECRET}")


def test_recorder_writes_one_line_per_event_without_ansi(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    rec, returned = _record(path, secrets=SUMMARY["secrets"])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == rec.count == SUMMARY["count"] == len(EVENTS)
    written = [json.loads(line) for line in lines]
    assert [w["counter"] for w in written] == [e["counter"] for e in EVENTS]
    assert all("\x1b" not in w["stdout"] for w in written)
    assert "changed: [localhost]" in written[3]["stdout"]
    assert returned == [False] * len(EVENTS)  # ansible-runner keeps no per-event files


def test_recorder_summary_matches_fixture(tmp_path: Path) -> None:
    rec, _ = _record(tmp_path / "events.jsonl", secrets=SUMMARY["secrets"])
    assert rec.stats == SUMMARY["stats"]
    assert [asdict(f) for f in rec.failures] == SUMMARY["failures"]


def test_recorder_redacts_secret_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    rec, _ = _record(path, secrets=SUMMARY["secrets"])
    text = path.read_text(encoding="utf-8")
    assert "hunter2" not in text  # raw, JSON-escaped, in stdout and in nested res
    failed = json.loads(text.splitlines()[11])
    assert failed["event_data"]["res"]["json"]["echo"]["Authorization"] == f"Bearer {REDACTED}"
    assert REDACTED in failed["event_data"]["res"]["invocation"]["module_args"]["headers"][
        "Authorization"]
    assert REDACTED in failed["stdout"]
    assert all("hunter2" not in f.message for f in rec.failures)


def test_recorder_without_secrets_writes_events_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _record(path)
    failed = json.loads(path.read_text(encoding="utf-8").splitlines()[11])
    assert failed["event_data"] == EVENTS[11]["event_data"]


def test_recorder_appends_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _record(path)
    rec, _ = _record(path)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2 * len(EVENTS)
    rec(copy.deepcopy(EVENTS[0]))  # after the with block: counted, not written
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2 * len(EVENTS)


def test_on_event_sees_every_event_and_its_errors_do_not_break_the_run(tmp_path: Path) -> None:
    seen: list[str] = []

    def display(event: Any) -> None:
        seen.append(event["event"])
        raise RuntimeError("terminal went away")

    rec, returned = _record(tmp_path / "events.jsonl", on_event=display)
    assert seen == [e["event"] for e in EVENTS]
    assert rec.count == len(EVENTS)
    assert returned == [False] * len(EVENTS)


def test_stats_from_several_playbooks_add_up(tmp_path: Path) -> None:
    stats = next(e for e in EVENTS if e["event"] == "playbook_on_stats")
    with EventRecorder(tmp_path / "e.jsonl") as rec:
        rec(copy.deepcopy(stats))
        rec(copy.deepcopy(stats))
    assert rec.stats["localhost"]["ok"] == 6
    assert rec.stats["cache-1"]["unreachable"] == 2


def test_describe_by_event() -> None:
    expected = SUMMARY["describe"]
    for event in EVENTS:
        got = describe(event)
        want = expected.get(event["counter"])
        if want is None:
            assert got is None, event["event"]
            continue
        assert got is not None
        assert got[0] == want[0]
        if len(want) == 3:
            assert got[1].startswith(want[1])
        else:
            assert got[1] == want[1]


def test_describe_tolerates_sparse_events() -> None:
    assert describe({}) is None
    assert describe({"event": "runner_on_ok", "event_data": None}) == ("ok", " []")
    assert describe({"event": "runner_on_failed"}) == ("failed", " []: task failed (no message)")


# -- Redactor --------------------------------------------------------------------------------


def test_redactor_replaces_plain_and_json_escaped_forms() -> None:
    secret = 'pa"ss\\word'
    redact = Redactor([secret])
    line = json.dumps({"a": secret, "b": {"c": [f"x{secret}y"]}, "d": secret})
    assert redact(line).count(REDACTED) == 3
    assert "pa" not in redact(line).replace(REDACTED, "")
    assert redact(f"plain {secret} text") == f"plain {REDACTED} text"


def test_redactor_ignores_short_values_and_is_falsy_when_empty() -> None:
    assert not Redactor()
    assert not Redactor(["", "abc"])
    assert Redactor(["abcd"])
    assert Redactor(["abc"])("abc abcd") == "abc abcd"


def test_redactor_longest_first() -> None:
    redact = Redactor(["token", "token-extended"])
    assert redact("token-extended and token") == f"{REDACTED} and {REDACTED}"


@pytest.mark.parametrize("order", ["short-first", "long-first"])
def test_redactor_escaped_secret_is_whole_whatever_the_order(order: str) -> None:
    # One secret is a prefix of another that holds a quote: the longer one, as
    # written in a JSON line, must be replaced whole, not leave its tail behind.
    secrets = ["abcd", 'abcd"xyz']
    redact = Redactor(secrets if order == "short-first" else secrets[::-1])
    assert redact(json.dumps({"m": 'abcd"xyz'})) == json.dumps({"m": REDACTED})


# -- failure_message -------------------------------------------------------------------------


@pytest.mark.parametrize(("res", "message"), [
    ({"msg": "boom", "stderr": "ignored"}, "boom"),
    ({"msg": "  ", "stderr": "disk full\n"}, "disk full"),
    ({"msg": "non-zero return code", "rc": 2, "stderr": "x"}, "non-zero return code (rc=2)"),
    ({"stderr": "no such file", "rc": 127}, "no such file (rc=127)"),
    ({"reason": "Conditional check failed"}, "Conditional check failed"),
    ({"module_stderr": "Traceback ...", "rc": 1}, "Traceback ... (rc=1)"),
    ({"stdout": "last resort"}, "last resort"),
    ({"censored": "the output has been hidden due to no_log"},
     "the output has been hidden due to no_log"),
    ({"msg": "\x1b[0;31mred\x1b[0m alert"}, "red alert"),
    ({"rc": 0, "msg": "ok rc"}, "ok rc"),
    ({"rc": 3}, "(rc=3)"),
    ({}, "task failed (no message)"),
])
def test_failure_message(res: dict[str, Any], message: str) -> None:
    assert failure_message(res) == message


def test_failure_message_truncates() -> None:
    message = failure_message({"msg": "x" * (MAX_MESSAGE * 3)})
    assert message == "x" * MAX_MESSAGE + "..."
    assert failure_message({"msg": "y" * MAX_MESSAGE}) == "y" * MAX_MESSAGE


@pytest.mark.parametrize("cut", [
    "msg: canary-secr...",            # ansible's or our own "..." mark
    'msg: "canary-secr"',              # a display cut inside a quoted string
    "msg: canary-secr",                # the end of the text
    '{"stdout": "canary-secr\\r\\n"}',  # an escaped line end in JSON
])
def test_a_secret_cut_short_leaves_no_prefix(cut: str) -> None:
    redact = Redactor(["canary-secret-0123456789"])
    assert "canary-s" not in redact(cut)
    # A shared beginning that goes on with other text is not a cut secret.
    assert redact("canary-seconds elapsed") == "canary-seconds elapsed"


def test_each_line_of_a_multi_line_secret_is_redacted_alone() -> None:
    pem = "-----BEGIN KEY-----\nAAAAline-one-canary\nBBBBline-two-canary\n-----END KEY-----\n"
    shown = "key: |\n    AAAAline-one-canary\n    BBBBline-two-canary\n"  # a YAML block
    assert "canary" not in Redactor([pem])(shown)
