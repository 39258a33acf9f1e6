"""``pullboot pull``: every ansible-pull option maps onto a setting, a warning or an error."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pullboot.cli import _pull_settings, _pull_source, _request, build_parser, main
from pullboot.errors import ConfigError


@pytest.fixture(autouse=True)
def _restore_pullboot_logger() -> Iterator[None]:
    logger = logging.getLogger("pullboot")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["pull", *argv])


def _cli(*argv: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The cli-layer settings and report warnings ``pullboot pull ARGV`` asks for."""
    args = _parse(*argv)
    settings, warnings = _pull_settings(args)
    req = _request(args, settings=settings, warnings=warnings)
    return dict(req.cli), req.warnings


@pytest.mark.parametrize(("url", "source"), [
    ("https://github.com/org/boot", "git+https://github.com/org/boot"),
    ("https://github.com/org/boot.git", "git+https://github.com/org/boot.git"),
    ("http://git.internal/boot.git", "git+http://git.internal/boot.git"),
    ("ssh://git@host/org/boot.git", "git+ssh://git@host/org/boot.git"),
    ("git@github.com:org/boot.git", "git@github.com:org/boot.git"),
    ("git://127.0.0.1:9418/boot", "git://127.0.0.1:9418/boot"),
    ("file:///srv/boot", "git+file:///srv/boot"),
    ("/srv/boot", "git+file:///srv/boot"),
    ("git+https://host/boot.git", "git+https://host/boot.git"),
])
def test_url_forms_map_to_the_git_source(url: str, source: str) -> None:
    assert _pull_source(url) == source


def test_relative_path_url_is_made_absolute(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _pull_source("boot") == f"git+file://{tmp_path}/boot"


@pytest.mark.parametrize("url", ["-oProxyCommand=x", "ext::sh -c id", "github.com:org/boot",
                                 "svn://host/repo", "s3://bucket/boot.tgz"])
def test_urls_that_are_not_git_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        _pull_source(url)


def test_an_ansible_pull_command_line_maps_onto_settings(tmp_path: Path) -> None:
    cli, warnings = _cli(
        "-U", "https://git.example.com/ops/boot.git", "-C", "v1.2", "-d", str(tmp_path / "d"),
        "-i", "hosts", "-e", "a=1 b=2", "-e", '{"c": 3}', "-o", "-s", "30", "--full",
        "--check", "--diff", "-t", "web,db", "--skip-tags", "slow", "-l", "localhost",
        "--vault-password-file", "/etc/vault1", "--vault-pass-file", "/etc/./vault2",
        "--vault-id", "prod@/etc/vault3", "--accept-host-key", "--private-key", "/root/key",
        "--verify-commit", "-f", "-vvv", "site.yml", "extra.yml")
    assert cli == {
        "source": "git+https://git.example.com/ops/boot.git", "ref": "v1.2",
        "state_dir": str(tmp_path / "d"), "run.inventory": ["hosts"],
        "vars": {"a": "1", "b": "2", "c": 3}, "only_if_changed": True, "splay": 30.0,
        "splay_first_boot": True, "git.full": True, "run.check": True, "run.diff": True,
        "run.tags": ["web", "db"], "run.skip_tags": ["slow"], "run.limit": "localhost",
        "vault_password_file": "/etc/vault1", "vault_ids": ["/etc/vault2", "prod@/etc/vault3"],
        "git.accept_new_host_key": True, "git.ssh_key": "/root/key",
        "git.verify_commit": True, "on_source_failure": "last-good", "run.verbosity": 3,
        "playbooks": ["site.yml", "extra.yml"]}
    assert warnings == ()


def test_capital_c_is_checkout_not_check() -> None:
    cli, _ = _cli("-U", "/srv/boot", "-C", "main")
    assert cli["ref"] == "main" and "run.check" not in cli


def test_track_subs_turns_submodules_on_and_says_what_differs() -> None:
    cli, warnings = _cli("-U", "/srv/boot", "--track-subs")
    assert cli["git.submodules"] is True
    assert any(w.startswith("--track-subs:") and "records" in w for w in warnings)


def test_ignored_options_are_named_in_warnings() -> None:
    _, warnings = _cli("-U", "/srv/boot", "--purge", "-u", "bob", "-c", "ssh", "-T", "5",
                       "--ssh-extra-args", "-4", "-M", "/lib", "--list-hosts",
                       "--become-password-file", "/f", "--clean", "--flush-cache")
    text = "\n".join(warnings)
    for flag in ("--purge", "-u/--user", "-c/--connection", "-T/--timeout", "--ssh-extra-args",
                 "-M/--module-path", "--list-hosts", "--become-password-file"):
        assert flag in text
    # --clean and --flush-cache are what pullboot always does: nothing to warn about.
    assert "--clean" not in text and "--flush-cache" not in text


@pytest.mark.parametrize(("argv", "match"), [
    ((), "-U/--url is required"),
    (("-U", "/srv/boot", "-m", "hg"), "git repositories only"),
    (("-U", "/srv/boot", "-m", "cvs"), "ansible-pull knows"),
    (("-U", "/srv/boot", "-K"), "never prompts"),
    (("-U", "/srv/boot", "-J"), "never prompts"),
    (("-U", "/srv/boot", "-k"), "never prompts"),
    (("-U", "/srv/boot", "-s", "soon"), "-s/--sleep"),
])
def test_options_that_would_change_what_runs_are_errors(argv: tuple[str, ...],
                                                        match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _pull_settings(_parse(*argv))


def test_an_ansible_pull_checkout_is_not_taken_as_the_state_dir(tmp_path: Path) -> None:
    (tmp_path / "co" / ".git").mkdir(parents=True)
    with pytest.raises(ConfigError, match="ansible-pull checkout") as err:
        _pull_settings(_parse("-U", "/srv/boot", "-d", str(tmp_path / "co")))
    assert "rm -rf" in (err.value.hint or "")


def test_errors_exit_2_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "-U", "/srv/boot", "-m", "subversion"]) == 2
    err = capsys.readouterr().err
    assert "pullboot: error: -m subversion" in err and "Traceback" not in err
