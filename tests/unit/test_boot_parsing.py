"""Pure parts of boot integration, from fixture files: results URL templates, secret
references, splay decisions, and the status file's wait logic."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pullboot import ship, splay, status
from pullboot.errors import ConfigError, SecretError
from pullboot.secrets import ALL_KINDS, SecretRef

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "boot"
TEMPLATES = yaml.safe_load((FIXTURES / "results_templates.yaml").read_text())
REFS = yaml.safe_load((FIXTURES / "secret_refs.yaml").read_text())


@pytest.mark.parametrize("case", TEMPLATES["cases"], ids=[c["name"] for c in TEMPLATES["cases"]])
def test_results_template(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(ConfigError) as info:
            ship.render(case["template"], TEMPLATES["report"])
        assert case["error"] in info.value.message
    else:
        assert ship.render(case["template"], TEMPLATES["report"]) == case["expected"]


def test_results_template_values_cannot_escape_their_path_segment() -> None:
    report = {**TEMPLATES["report"], "roles": [{"name": "../../x", "origin": "tag"}],
              "instance": {"hostname": "a/b c"}}
    url = ship.render("s3://r/{role}/{instance_id}/{run_id}/", report)
    assert url == "s3://r/.._.._x/a_b_c/20261128T042500Z-ab12cd/"


@pytest.mark.parametrize("case", REFS, ids=[str(c["text"]) for c in REFS])
def test_secret_reference(case: dict[str, Any]) -> None:
    if case.get("error"):
        with pytest.raises(SecretError):
            SecretRef.parse(case["text"], where="secret_vars.x")
        return
    ref = SecretRef.parse(case["text"], where="secret_vars.x")
    assert (ref.kind, ref.name, ref.field) == (case["kind"], case["name"], case.get("field"))
    assert str(ref) == case["text"]


@pytest.mark.parametrize(("text", "expected"), [
    ("env:GIT_TOKEN", ("env", "GIT_TOKEN", None)),
    ("/etc/pullboot/key", ("file", "/etc/pullboot/key", None)),
    ("file:./key", ("file", "./key", None)),
    ("secretsmanager:ci/git#token", ("secretsmanager", "ci/git", "token")),
])
def test_git_credential_references_use_the_same_parser(text: str,
                                                       expected: tuple[str, ...]) -> None:
    ref = SecretRef.parse(text, where="git.token", kinds=ALL_KINDS)
    assert (ref.kind, ref.name, ref.field) == expected
    # The play's secrets come from the AWS stores only, as before.
    if ref.kind in ("env", "file"):
        with pytest.raises(SecretError, match=r"secret_vars\.x"):
            SecretRef.parse(text, where="secret_vars.x")


def test_splay_decisions() -> None:
    common: dict[str, Any] = {"stable": False, "splay_first_boot": False, "key": "i-1"}
    assert splay.decide(splay=0, first_boot=False, **common).seconds == 0
    assert splay.decide(splay=60, first_boot=True, **common).seconds == 0
    asked = splay.decide(splay=60, first_boot=True, **{**common, "splay_first_boot": True})
    assert asked.reason == "random"
    stable = {**common, "stable": True}
    a = splay.decide(splay=60, first_boot=False, **stable).seconds
    assert a == splay.decide(splay=60, first_boot=False, **stable).seconds
    assert 0 <= a < 60
    other = splay.decide(splay=60, first_boot=False, **{**stable, "key": "i-2"}).seconds
    assert other != a
    assert all(0 <= splay.decide(splay=5, first_boot=False, **common).seconds <= 5
               for _ in range(50))


def test_wait_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    assert status.wait(path, timeout=0.1, poll=0.02).outcome == "timeout"
    boot_id = status.current_boot_id()
    path.write_text(json.dumps({"status": "running", "pid": os.getpid(), "boot_id": boot_id,
                                "run_id": "r", "phase": "run"}))
    reasons: list[str] = []
    got = status.wait(path, timeout=0.1, poll=0.02, on_waiting=reasons.append)
    assert got.outcome == "timeout" and reasons == ["run r is in phase run"]
    # Above Linux's largest pid_max (2**22): no such process can exist.
    path.write_text(json.dumps({"status": "running", "pid": 2**22 + 12345, "boot_id": boot_id}))
    assert status.wait(path, timeout=5, poll=0.02).outcome == "died"
    path.write_text(json.dumps({"status": "failed", "exit_code": 1, "boot_id": boot_id}))
    got = status.wait(path, timeout=5, poll=0.02)
    assert (got.outcome, got.status and got.status["exit_code"]) == ("finished", 1)
