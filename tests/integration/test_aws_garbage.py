"""An AWS endpoint answering 200 with HTML (a captive portal, a wrong endpoint URL).

botocore raises ResponseParserError, which is not a BotoCoreError: before, it escaped every
``except BotoCoreError`` and ended the run in a traceback. Through the CLI, with the fault
proxy in front of moto answering every EC2 call with an HTML page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_cli, web_tree, write_tree

EC2_ENDPOINT_ENV = "AWS_ENDPOINT_URL_EC2"


@pytest.fixture
def garbage_ec2(fault_proxy: Any) -> Any:
    proxy = fault_proxy(env=EC2_ENDPOINT_ENV)
    proxy.garbage_next(100)
    return proxy


def test_unparsable_describe_tags_is_a_warning_not_a_traceback(
        make_imds: Any, garbage_ec2: Any, tmp_path: Path, out_dir: Path) -> None:
    make_imds(tags=None)  # metadata tags off: pullboot asks ec2:DescribeTags
    tree = tmp_path / "tree"
    write_tree(tree, web_tree())
    result = run_cli("run", "--source", str(tree), "--role", "web", "-e", f"out_dir={out_dir}",
                     "--json")
    assert any(r.method == "POST" for r in garbage_ec2.requests), "EC2 was not asked"
    assert "Traceback" not in result.stderr
    assert result.rc == 0, result.stderr
    assert "not a valid AWS response" in result.stderr


def test_unparsable_create_tags_is_a_failed_signal_in_the_report(
        make_imds: Any, garbage_ec2: Any, tmp_path: Path, out_dir: Path) -> None:
    make_imds(tags={"Name": "x"})
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump({"signals": {"tags": True}}))
    tree = tmp_path / "tree"
    write_tree(tree, web_tree())
    result = run_cli("run", "--source", str(tree), "--role", "web", "-e", f"out_dir={out_dir}",
                     "--json")
    assert "Traceback" not in result.stderr
    assert result.rc == 0, result.stderr
    (tags,) = [s for s in result.report["signals"] if s["kind"] == "tags"]
    assert tags["ok"] is False
    assert "not a valid AWS response" in tags["detail"]


@pytest.mark.parametrize("setting", ["git.token", "secret_vars"])
def test_unparsable_ssm_answer_is_a_clear_error(
        setting: str, fault_proxy: Any, make_repo: Any, tmp_path: Path) -> None:
    """SSM speaks JSON: botocore turns a non-JSON 200 into ``{"message": ...}``, no Parameter."""
    proxy = fault_proxy(env="AWS_ENDPOINT_URL_SSM")
    proxy.garbage_next(100)
    repo = make_repo(web_tree())
    cfg: dict[str, Any] = ({"git": {"token": "ssm:/boot/token"}} if setting == "git.token"
                           else {"secret_vars": {"db": "ssm:/boot/db"}})
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump(cfg))
    result = run_cli("run", "--source", repo.url, "--role", "web", "--json")
    assert proxy.requests, "SSM was not asked"
    assert "Traceback" not in result.stderr
    assert result.rc != 0
    assert "not a valid AWS response" in result.stderr
    assert result.report["status"] == "error"
