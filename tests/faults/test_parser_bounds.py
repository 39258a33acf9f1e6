"""Bounded parsers: every YAML/JSON document from outside is size-, depth- and count-limited.

Each test feeds a small hostile document through the CLI (IMDS fake, moto, a
git repo) and expects one clear error or warning line naming the input and
the limit, a report, and an end well within a generous time bound: before,
these hung, ended in MemoryError or in a RecursionError traceback.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Result, run_cli, web_tree

# 9 levels of 9 aliases: about 400 bytes, 9**9 (387 million) values expanded.
LAUGHS = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
BOUND_S = 60  # generous: each of these ends in a few seconds


def _bomb_vars() -> bytes:
    nested = "".join(f"    {line}\n" for line in LAUGHS.splitlines())
    return f"#cloud-config\npullboot:\n  role: web\n  vars:\n{nested}".encode()


def _timed(*args: str) -> tuple[Result, float]:
    start = time.monotonic()
    res = run_cli(*args)
    return res, time.monotonic() - start


def _assert_refused(res: Result, elapsed: float, rc: int, *words: str) -> None:
    assert elapsed < BOUND_S
    assert res.rc == rc, res.stderr
    assert "Traceback" not in res.stderr
    error = res.report["error"]  # a report was written
    for word in words:
        assert word in error["message"], error["message"]
        assert word in res.stderr  # the one clear error line
    assert len(res.stderr.encode()) < 20_000, "the document must not be echoed"


def test_yaml_alias_bomb_in_user_data_vars(make_repo: Any, make_imds: Any,
                                           out_dir: Path) -> None:
    assert len(_bomb_vars()) < 600
    repo = make_repo(web_tree())
    make_imds(user_data=_bomb_vars())
    res, elapsed = _timed("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    _assert_refused(res, elapsed, 2, "user-data expands to more than 50000 values")
    assert "16 KiB" in res.report["error"]["hint"]
    assert not (out_dir / "web.txt").exists()


@pytest.mark.parametrize(("user_data", "problem"), [
    pytest.param(gzip.compress(b"pullboot: {role: web}\n" + b" " * (4 << 20)),
                 "compressed user-data expands beyond 1048576 bytes", id="gzip-bomb"),
    pytest.param(b'Content-Type: multipart/mixed; boundary="B"\nMIME-Version: 1.0\n\n'
                 + b"--B\nContent-Type: text/plain\n\nx: 1\n" * 200 + b"--B--\n",
                 "more than 64 MIME parts", id="mime-parts"),
    pytest.param(gzip.compress(gzip.compress(gzip.compress(gzip.compress(gzip.compress(
        gzip.compress(b"pullboot: {role: web}\n")))))),
                 "nests gzip/MIME containers deeper than 4", id="gzip-in-gzip"),
    pytest.param(b"pullboot: {role: web, vars: {x: " + b"[" * 5000 + b"}}\n",
                 "user-data nests deeper than 32 levels", id="deep-yaml"),
])
def test_user_data_expansion_limits(user_data: bytes, problem: str, make_repo: Any,
                                    make_imds: Any) -> None:
    assert len(user_data) <= 16_384  # what EC2 accepts
    repo = make_repo(web_tree())
    make_imds(user_data=user_data)
    res, elapsed = _timed("run", "--source", repo.url, "--json")
    _assert_refused(res, elapsed, 2, problem)


def test_identity_document_of_5000_brackets(make_repo: Any, make_imds: Any,
                                            out_dir: Path) -> None:
    imds = make_imds(tags={"pullboot:role": "web"})
    imds.identity_document = b"[" * 5000
    repo = make_repo(web_tree())
    res, elapsed = _timed("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    assert elapsed < BOUND_S
    assert "Traceback" not in res.stderr
    # Malformed, like any broken document: one warning, the same facts from meta-data/.
    assert "identity document is malformed (the document nests deeper than 8 levels)" \
        in res.stderr
    assert res.rc == 0, res.stderr
    assert res.report["instance"]["id"] == imds.instance_id
    assert (out_dir / "web.txt").exists()


def test_yaml_alias_bomb_in_the_config_file(make_repo: Any, tmp_path: Path) -> None:
    config = tmp_path / "bomb.yml"
    nested = "".join(f"  {line}\n" for line in LAUGHS.splitlines())
    config.write_text(f"laughs:\n{nested}")
    repo = make_repo(web_tree())
    res, elapsed = _timed("run", "--config", str(config), "--source", repo.url, "--role", "web",
                          "--json")
    _assert_refused(res, elapsed, 2, f"config file {config} expands to more than 100000 values")


def test_yaml_alias_bomb_in_the_trees_requirements(make_repo: Any) -> None:
    repo = make_repo(web_tree(**{"requirements.yml": "collections: []\n" + LAUGHS}))
    res, elapsed = _timed("run", "--source", repo.url, "--role", "web", "--json")
    _assert_refused(res, elapsed, 4, "requirements.yml expands to more than 100000 values")


def test_deeply_nested_json_secret(aws: Any, make_repo: Any, tmp_path: Path) -> None:
    aws.client("secretsmanager").create_secret(Name="deep", SecretString="[" * 5000)
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump(
        {"secret_vars": {"x": "secretsmanager:deep#field"}}))
    repo = make_repo(web_tree())
    res, elapsed = _timed("run", "--source", repo.url, "--role", "web", "--json")
    _assert_refused(res, elapsed, 2, "secretsmanager:deep#field nests deeper than 64 levels")
    assert json.dumps(res.report).count("[[[[") == 0
