"""Hostile and malformed input: role names, user-data, config files, a dead IMDS."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pullboot.roles import ROLE_PATTERN
from tests.conftest import run_cli, web_tree


@pytest.mark.parametrize("value", [
    "web/../../etc", "web\x07", "wéb", "web\nrm -rf /", "w" * 10_000, "web,../x", "Web",
], ids=["separators", "control", "non-ascii", "newline", "10kb", "second-bad", "upper"])
def test_hostile_role_names_from_the_cli(value: str, make_repo: Any, state_dir: Path) -> None:
    repo = make_repo(web_tree())
    res = run_cli("run", "--source", repo.url, "--role", value, "--json")
    assert res.rc == 3, res.stderr
    error = res.report["error"]
    assert ROLE_PATTERN in error["hint"]
    assert len(error["message"]) < 300, "a 10 KB value must not be echoed whole"
    assert not list((state_dir / "cache").rglob("*"))


@pytest.mark.parametrize("user_data", [
    pytest.param(os.urandom(4096), id="binary"),
    pytest.param(b"pullboot: [unclosed\n  role: web", id="malformed-yaml"),
    pytest.param(b"\x1f\x8b\x08\x00garbage", id="broken-gzip"),
    pytest.param(b"#!/bin/bash\necho not ours\n", id="script"),
])
def test_unusable_user_data_is_ignored(user_data: bytes, make_repo: Any, make_imds: Any) -> None:
    repo = make_repo(web_tree())
    make_imds(tags={"pullboot:role": "web"}, user_data=user_data)
    res = run_cli("plan", "--source", repo.url, "--json")
    assert res.rc == 0, res.stderr
    assert res.report["roles"] == [{"name": "web", "origin": "imds-tag:pullboot:role"}]


def test_16kb_user_data(make_repo: Any, make_imds: Any) -> None:
    padding = "".join(f"# line {i:05d} of padding in a big cloud-config\n" for i in range(340))
    user_data = f"#cloud-config\n{padding}pullboot:\n  role: web\n".encode()
    assert 15_000 < len(user_data) <= 16_384
    repo = make_repo(web_tree())
    make_imds(user_data=user_data)
    res = run_cli("plan", "--source", repo.url, "--json")
    assert res.rc == 0, res.stderr
    assert res.report["roles"] == [{"name": "web", "origin": "user-data"}]


def test_user_data_is_never_logged(make_repo: Any, make_imds: Any) -> None:
    canary = "canary-userdata-77aa"
    repo = make_repo(web_tree())
    make_imds(user_data=f"#cloud-config\npassword: {canary}\npullboot:\n  role: web\n".encode())
    res = run_cli("plan", "--source", repo.url, "-vv")
    assert res.rc == 0, res.stderr
    assert canary not in res.stdout + res.stderr


@pytest.mark.parametrize(("text", "needle"), [
    ("sorce: /srv\n", "did you mean 'source'"),
    ("imds:\n  enabld: false\n", "did you mean 'imds.enabled'"),
    ("keep_runs: lots\n", "keep_runs takes a whole number"),
    ("roles: 5\n", "roles takes a list of strings"),
])
def test_bad_config_file(text: str, needle: str, tmp_path: Path, make_repo: Any,
                         state_dir: Path) -> None:
    cfg = tmp_path / "bad.yml"
    cfg.write_text(text)
    repo = make_repo(web_tree())
    res = run_cli("run", "--config", str(cfg), "--source", repo.url, "--role", "web", "--json")
    assert res.rc == 2
    assert str(cfg) in res.report["error"]["message"]
    assert needle in res.report["error"]["hint"] + res.report["error"]["message"]
    assert needle in res.stderr
    assert not list((state_dir / "cache").rglob("*"))


def test_imds_that_never_answers(make_imds: Any, make_repo: Any, tmp_path: Path) -> None:
    make_imds(start_down=True)
    (tmp_path / "pullboot.yml").write_text("imds:\n  budget: 1\n")
    repo = make_repo(web_tree())
    res = run_cli("run", "--source", repo.url, "--role", "web", "--json")
    assert res.rc == 3
    assert "did not answer" in res.report["error"]["message"]
    assert "AWS_EC2_METADATA_DISABLED" in res.report["error"]["hint"]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "huge"])
def test_config_file_that_is_not_a_small_regular_file(kind: str, tmp_path: Path,
                                                      make_repo: Any) -> None:
    # A FIFO would block the read forever, /dev/zero never ends: both are refused up front.
    path = tmp_path / "cfg"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text("# padding\n" * 200_000)
    res = run_cli("run", "--role", "web", "--source", make_repo(web_tree()).url,
                  "--config", str(path), timeout=60)
    assert res.rc == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert any(why in res.stderr for why in ("is not a regular file", "is larger than",
                                             "Is a directory"))


@pytest.mark.parametrize("value", ["inf", "nan", "1e999"])
def test_non_finite_splay_is_a_usage_error(value: str, make_repo: Any) -> None:
    res = run_cli("run", "--role", "web", "--source", make_repo(web_tree()).url,
                  "--splay", value, timeout=60)
    assert res.rc == 2, res.stderr
    assert "expected a finite number" in res.stderr and "Traceback" not in res.stderr
