"""The CLI adapter in-process: -e parsing, --version/--help, config errors -> exit 2."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pullboot import __version__
from pullboot.cli import EXIT_CODES, main
from pullboot.config import coerce
from pullboot.errors import ConfigError
from pullboot.extravars import parse_extra_vars


@pytest.fixture(autouse=True)
def _restore_pullboot_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # main() points the "pullboot" logger at the (captured) stderr and stops
    # propagation; undo that so later tests' caplog still sees pullboot's logs.
    logger = logging.getLogger("pullboot")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


# -- -e / --extra-vars -------------------------------------------------------------------


def test_extra_vars_key_value_file_and_json(tmp_path: Path) -> None:
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text("env: prod\nreplicas: 3\nnested: {a: [1, 2]}\n")
    got = parse_extra_vars(["color=blue", "empty=", "eq=a=b", f"@{vars_file}",
                            '{"replicas": 5, "debug": true}', " spaced=x "])
    assert got == {"color": "blue", "empty": "", "eq": "a=b", "env": "prod", "replicas": 5,
                   "nested": {"a": [1, 2]}, "debug": True, "spaced": "x"}


@pytest.mark.parametrize(("item", "expected"), [
    # issue 13 item 7: this was one var a="1 b=2"
    ("a=1 b=2", {"a": "1", "b": "2"}),
    ("msg='hello world' n=\"x y\"", {"msg": "hello world", "n": "x y"}),
    ("tpl={{ other | default('a b') }} c=3", {"tpl": "{{ other | default('a b') }}", "c": "3"}),
    ("eq=a=b  spaced=x", {"eq": "a=b", "spaced": "x"}),
    ("esc=a\\nb", {"esc": "a\nb"}),
    ("['not', 'a', 'mapping']", None),
    ("{a: 1, b: [x, y]}", {"a": 1, "b": ["x", "y"]}),
    ('{"a": {"b": null}}', {"a": {"b": None}}),
])
def test_extra_vars_as_ansible_reads_them(item: str, expected: dict[str, Any] | None) -> None:
    if expected is None:
        with pytest.raises(ConfigError, match="does not hold a mapping"):
            parse_extra_vars([item])
        return
    assert parse_extra_vars([item]) == expected
    from ansible.parsing.splitter import parse_kv

    if item[0] not in "{[":  # the same as ansible's own parser, pair for pair
        assert {str(k): str(v) for k, v in parse_kv(item).items()} == expected


def test_extra_vars_empty_items_are_skipped() -> None:
    assert parse_extra_vars(["", "a=1"]) == {"a": "1"}


def test_extra_vars_file_must_be_regular_and_small(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        parse_extra_vars([f"@{fifo}"])  # would block forever if opened blocking
    big = tmp_path / "big.yml"
    big.write_text("a: " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        parse_extra_vars([f"@{big}"])
    with pytest.raises(ConfigError, match=r"regular file|Is a directory"):
        parse_extra_vars([f"@{tmp_path}"])
    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not a UTF-8"):
        parse_extra_vars([f"@{binary}"])


def test_extra_vars_parse_error_does_not_echo_the_value() -> None:
    with pytest.raises(ConfigError, match="unbalanced") as info:
        parse_extra_vars(["pw=\"s3cr3t-value"])
    assert "s3cr3t" not in info.value.message


def test_extra_vars_later_items_win() -> None:
    assert parse_extra_vars(["a=1", '{"a": 2}', "a=3"]) == {"a": "3"}


def test_extra_vars_none() -> None:
    assert parse_extra_vars([]) == {}


@pytest.mark.parametrize(("item", "match"), [
    ("a-b=1", "'a-b'"),
    ("=1", "'=1' is not KEY=VALUE"),
    ("a=1 junk", "'junk' is not KEY=VALUE"),
    ("./vars.yml", "looks like a file name"),
    ("1abc=x", "'1abc'"),
    ("novalue", "'novalue' is not KEY=VALUE"),
    ('{"a": 1', "is not valid JSON/YAML"),
    ('{"bad-name": 1}', "'bad-name'"),
    ("@/nonexistent/vars.yml", "cannot read vars file"),
])
def test_extra_vars_refused(item: str, match: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_extra_vars([item])
    assert match in info.value.message
    assert info.value.exit_code == 2


def test_extra_vars_file_must_hold_a_mapping(tmp_path: Path) -> None:
    vars_file = tmp_path / "list.yml"
    vars_file.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="does not hold a mapping"):
        parse_extra_vars([f"@{vars_file}"])


# -- --version / --help --------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pullboot {__version__}"


@pytest.mark.parametrize("argv", [[], ["run"], ["plan"], ["status"]],
                         ids=["pullboot", "run", "plan", "status"])
def test_help_mentions_exit_codes(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pullboot {' '.join(argv)}".rstrip())
    assert EXIT_CODES in out
    assert "75  another run holds the lock" in out


def test_run_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--config", "--state-dir", "--source", "--role", "--extra-vars", "--check",
                   "--timeout", "--json"):
        assert option in out


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# -- config errors through main -------------------------------------------------------------


def _bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yml"
    path.write_text("sorce: /srv/playbooks\nrole: web\n")
    return path


def test_run_with_bad_config_key_exits_2_with_did_you_mean(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--config", str(_bad_config(tmp_path)),
                 "--state-dir", str(tmp_path / "state")])
    out, err = capsys.readouterr()
    assert code == 2
    assert "did you mean 'source'" in err
    assert "unknown setting 'sorce'" in err
    assert "error" in out


def test_run_with_bad_config_key_json_report(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--json", "--config", str(_bad_config(tmp_path)),
                 "--state-dir", str(tmp_path / "state")])
    report = json.loads(capsys.readouterr().out)
    assert code == report["exit_code"] == 2
    assert report["status"] == "error"
    assert report["error"]["stage"] == "config"
    assert report["error"]["type"] == "ConfigError"
    assert "did you mean 'source'" in report["error"]["hint"]


def test_run_with_bad_config_still_writes_its_report(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # pipeline.run documents a report "written whenever the state dir is writable";
    # --state-dir on the command line names a writable one.
    state = tmp_path / "state"
    main(["run", "--config", str(_bad_config(tmp_path)), "--state-dir", str(state)])
    capsys.readouterr()
    reports = list(state.glob("runs/*/report.json"))
    assert len(reports) == 1
    assert json.loads(reports[0].read_text())["error"]["type"] == "ConfigError"


@pytest.mark.parametrize("command", ["plan", "status"])
def test_other_commands_print_config_errors_on_stderr(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([command, "--config", str(_bad_config(tmp_path))])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "pullboot: error: unknown setting 'sorce' in config file" in err
    assert "pullboot: fix: did you mean 'source'" in err


def test_bad_extra_var_on_the_command_line_exits_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "-e", "a-b=1", "--state-dir", str(tmp_path / "state")])
    assert code == 2
    assert "'a-b'" in capsys.readouterr().err


def test_did_you_mean_hint_names_a_command_that_exists(capsys: pytest.CaptureFixture[str]) -> None:
    # The unknown-setting hint sends the user to "pullboot <cmd> --help": it must work.
    with pytest.raises(ConfigError) as info:
        coerce("sorce", "/srv", where="test")
    hint = info.value.hint or ""
    assert "pullboot " in hint
    command = hint.split("pullboot ", 1)[1].split()[0]
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    capsys.readouterr()
    assert exited.value.code == 0


def test_exit_code_tables_come_from_errors_py() -> None:
    from pathlib import Path

    from pullboot.errors import EXIT_MEANINGS, PullbootError, exit_code_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code, meaning, _classes in exit_code_table():
        assert f"  {code:<3} {meaning}\n" in EXIT_CODES
        assert f"| {code} | {meaning} |" in readme, f"README's exit-code row for {code}"
    # Every error class pullboot raises carries one of the documented codes, and lives in
    # errors.py (the one hierarchy).
    import importlib
    import pkgutil

    import pullboot

    for mod in pkgutil.walk_packages(pullboot.__path__, "pullboot."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)  # every module: no error class can hide
    stack = [PullbootError]
    while stack:
        cls = stack.pop()
        assert cls.exit_code in EXIT_MEANINGS, cls
        assert cls.__module__ == "pullboot.errors", f"{cls.__name__} is in {cls.__module__}"
        stack.extend(cls.__subclasses__())
