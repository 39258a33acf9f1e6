"""A play that stops before any task says why: report, stderr/journal line and status.

Each case is a real ansible-playbook run through the CLI on a repo with one
kind of play-level error (issue 13 item 1). Before the fix the report had
``failures: []`` and ``error: null``, and the reason was only in events.jsonl.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

HEAD = "- name: p\n  hosts: all\n  gather_facts: false\n"
CASES: dict[str, tuple[dict[str, str], str, str]] = {
    # name: (files, a phrase of ansible's message, the origin it names)
    "yaml_syntax": ({"playbooks/web.yml": HEAD + "  tasks:\n    - debug: msg=hi\n   bad: [\n"},
                    "YAML", "playbooks/web.yml:6"),
    "removed_include": ({"playbooks/web.yml": HEAD + "  tasks:\n    - include: other.yml\n"},
                        "include", "playbooks/web.yml:5"),
    "unknown_attribute": ({"playbooks/web.yml": HEAD + "  bogus_attr: 1\n  tasks: []\n"},
                          "bogus_attr", "playbooks/web.yml:4"),
    "missing_role": ({"playbooks/web.yml": HEAD + "  roles:\n    - no_such_role\n"},
                     "no_such_role", "playbooks/web.yml:5"),
    "missing_module": ({"playbooks/web.yml": HEAD + "  tasks:\n    - community.nosuch.thing:"
                        "\n        a: 1\n"}, "community.nosuch.thing", "playbooks/web.yml:5"),
}


def _vault_case(tmp_path: Path) -> tuple[dict[str, str], str, str]:
    secret_file = tmp_path / "plain.yml"
    secret_file.write_text("db_password: hunter2-canary\n")
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "encrypt",
                    "--vault-password-file", str(pw), str(secret_file)], check=True,
                   capture_output=True, timeout=60)
    play = HEAD + "  vars_files: [../vars/secret.yml]\n  tasks:\n    - debug: var=db_password\n"
    return ({"playbooks/web.yml": play, "vars/secret.yml": secret_file.read_text()},
            "vault", "vars/secret.yml")


@pytest.mark.parametrize("case", [*CASES, "vault_without_password"])
def test_play_level_error_names_ansible_message_and_origin(
        case: str, make_repo: Any, tmp_path: Path) -> None:
    files, phrase, origin = CASES[case] if case in CASES else _vault_case(tmp_path)
    repo = make_repo(files)
    res = run_cli("run", "--source", repo.url, "--role", "web", "--json")
    assert res.rc == 1, res.stderr
    report = res.report
    assert report["status"] == "failed" and report["failures"] == []
    error = report["error"]
    assert error is not None, "a failed play with no failed task must say why"
    assert (error["stage"], error["type"]) == ("play", "PlayError")
    assert phrase.lower() in error["message"].lower()
    assert error["origin"].startswith(origin), error
    assert origin in error["message"] and error["hint"]
    # stderr, where the journal looks: the error line and the run's finished line.
    assert f"pullboot: error: {error['message']}" in res.stderr
    finished = next(x for x in res.stderr.splitlines() if "finished: failed" in x)
    assert origin in finished
    status = run_cli("status")
    assert status.rc == 0
    assert report["run_id"] in status.stdout and error["message"] in status.stdout
    waited = run_cli("status", "--wait", "--timeout", "30")
    assert waited.rc == 1 and f"error: {error['message']}" in waited.stdout


def test_failed_task_keeps_failures_and_no_play_error(make_repo: Any) -> None:
    from tests.conftest import FAIL_PLAY

    repo = make_repo({"playbooks/web.yml": FAIL_PLAY})
    res = run_cli("run", "--source", repo.url, "--role", "web", "--json")
    assert res.rc == 1
    assert res.report["failures"] and res.report["error"] is None
    assert "the widget is broken" in run_cli("status").stdout
