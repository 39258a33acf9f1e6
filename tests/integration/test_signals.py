"""Readiness signals against real HTTP fakes: FakeAwsQuery (lifecycle, cfn) in front of moto.

moto 5 implements neither CompleteLifecycleAction, RecordLifecycleActionHeartbeat nor
SignalResource; FakeAwsQuery records them and relays everything else (DescribeAuto-
ScalingInstances, ...) to moto, whose EC2 also receives the status tags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import FAIL_PLAY, run_cli, web_tree

HOOK = "boot-ready"
GROUP = "web-asg"
STACK = "prod-web"
RESOURCE = "WebGroup"

SLOW_PLAY = """\
- name: slow
  hosts: all
  gather_facts: false
  tasks:
    - name: take a while
      ansible.builtin.command: sleep 2.5
      changed_when: false
"""


def _config(tmp_path: Path, **signals: Any) -> None:
    settings = {"signals": {"lifecycle_hook": HOOK, "cloudformation": True, "tags": True,
                            "budget": 5, **signals}}
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump(settings))


def _instance(aws: Any) -> str:
    ec2 = aws.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    return str(ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"])


def _tags(aws: Any, instance_id: str) -> dict[str, str]:
    found = aws.client("ec2").describe_tags(
        Filters=[{"Name": "resource-id", "Values": [instance_id]}])["Tags"]
    return {t["Key"]: t["Value"] for t in found if t["Key"].startswith("pullboot:")}


@pytest.fixture
def instance(aws: Any, make_imds: Any) -> str:
    """An instance in moto, seen through IMDS with the tags Auto Scaling and cfn would put."""
    instance_id = _instance(aws)
    make_imds(instance_id=instance_id, tags={
        "pullboot:role": "web", "aws:autoscaling:groupName": GROUP,
        "aws:cloudformation:stack-name": STACK, "aws:cloudformation:logical-id": RESOURCE})
    return instance_id


def test_good_run_sends_continue_success_and_tags(aws: Any, aws_query: Any, instance: str,
                                                  make_repo: Any, tmp_path: Path,
                                                  out_dir: Path) -> None:
    _config(tmp_path)
    repo = make_repo(web_tree())
    res = run_cli("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr

    [complete] = aws_query.calls_for("CompleteLifecycleAction")
    assert complete["params"] == {"LifecycleHookName": HOOK, "AutoScalingGroupName": GROUP,
                                  "InstanceId": instance, "LifecycleActionResult": "CONTINUE"}
    assert complete["service"] == "autoscaling" and complete["region"] == "eu-west-1"
    [signal] = aws_query.calls_for("SignalResource")
    assert signal["params"] == {"StackName": STACK, "LogicalResourceId": RESOURCE,
                                "UniqueId": instance, "Status": "SUCCESS"}
    report = res.report
    assert _tags(aws, instance) == {"pullboot:status": "successful",
                                    "pullboot:revision": repo.head,
                                    "pullboot:run-id": report["run_id"]}
    assert [(s["kind"], s["ok"]) for s in report["signals"]] == [
        ("tags", True), ("cloudformation", True), ("lifecycle", True)]
    assert report["warnings"] == []

    # A later run in the same boot (the timer) only updates the tags: the
    # lifecycle action and the cfn signal answer the launch, once per boot.
    again = run_cli("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    assert again.rc == 0, again.stderr
    assert len(aws_query.calls_for("CompleteLifecycleAction")) == 1
    assert len(aws_query.calls_for("SignalResource")) == 1
    assert _tags(aws, instance)["pullboot:run-id"] == again.report["run_id"]


def test_failed_run_sends_abandon_and_failure(aws: Any, aws_query: Any, instance: str,
                                              make_repo: Any, tmp_path: Path) -> None:
    _config(tmp_path)
    repo = make_repo({"playbooks/web.yml": FAIL_PLAY})
    res = run_cli("run", "--source", repo.url, "--json")
    assert res.rc == 1, res.stderr
    [complete] = aws_query.calls_for("CompleteLifecycleAction")
    assert complete["params"]["LifecycleActionResult"] == "ABANDON"
    assert complete["params"]["InstanceId"] == instance
    [signal] = aws_query.calls_for("SignalResource")
    assert signal["params"]["Status"] == "FAILURE"
    assert signal["params"]["UniqueId"] == instance
    assert _tags(aws, instance)["pullboot:status"] == "failed"


def test_long_run_sends_heartbeats_before_completing(aws: Any, aws_query: Any, instance: str,
                                                     make_repo: Any, tmp_path: Path) -> None:
    _config(tmp_path, heartbeat_interval=0.5, cloudformation=False, tags=False)
    repo = make_repo({"playbooks/web.yml": SLOW_PLAY})
    res = run_cli("run", "--source", repo.url, "--json")
    assert res.rc == 0, res.stderr
    actions = [c["action"] for c in aws_query.calls]
    beats = [c for c in aws_query.calls if c["action"] == "RecordLifecycleActionHeartbeat"]
    assert len(beats) >= 3, actions  # the play alone lasts 2.5 s
    assert actions[-1] == "CompleteLifecycleAction"
    for beat in beats:
        assert beat["params"] == {"LifecycleHookName": HOOK, "AutoScalingGroupName": GROUP,
                                  "InstanceId": instance}
        assert beat["status"] == 200
    assert "heartbeat" in res.report["signals"][0]["detail"]


def test_no_active_lifecycle_action_is_retried_within_the_window(
        aws: Any, aws_query: Any, make_imds: Any, make_repo: Any, tmp_path: Path,
        out_dir: Path) -> None:
    # The hook comes from an instance tag this time (the config's trust policy allows
    # that tag), and the group from the API.
    instance_id = _instance(aws)
    make_imds(instance_id=instance_id, tags={"pullboot:role": "web",
                                             "aws:autoscaling:groupName": GROUP,
                                             "pullboot:signals.lifecycle_hook": "tag-hook"})
    (tmp_path / "pullboot.yml").write_text(
        "signals: {budget: 10}\ntrust: {tags: [signals.lifecycle_hook]}\n")
    aws_query.fail_next("CompleteLifecycleAction", 2)  # "No active Lifecycle Action found"
    repo = make_repo(web_tree())
    res = run_cli("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    calls = aws_query.calls_for("CompleteLifecycleAction")
    assert [c["status"] for c in calls] == [400, 400, 200]
    assert calls[-1]["params"]["LifecycleHookName"] == "tag-hook"
    [lifecycle] = res.report["signals"]
    assert lifecycle["ok"] and lifecycle["attempts"] == 3


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_signal_that_never_lands_is_a_warning_unless_strict(
        strict: bool, aws: Any, aws_query: Any, instance: str, make_repo: Any,
        tmp_path: Path, out_dir: Path) -> None:
    _config(tmp_path, budget=1, strict=strict, cloudformation=False, tags=False)
    aws_query.fail_next("CompleteLifecycleAction", 100)
    repo = make_repo(web_tree())
    res = run_cli("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    report = res.report
    assert len(aws_query.calls_for("CompleteLifecycleAction")) >= 2  # retried, then gave up
    assert report["signals"][0]["ok"] is False
    assert "No active Lifecycle Action found" in report["warnings"][0]
    assert "signal lifecycle failed" in res.stderr
    if strict:
        assert (res.rc, report["status"], report["error"]["stage"]) == (1, "error", "signal")
    else:
        assert (res.rc, report["status"]) == (0, "successful")


def test_group_from_describe_auto_scaling_instances(aws: Any, aws_query: Any, make_imds: Any,
                                                    make_repo: Any, tmp_path: Path,
                                                    out_dir: Path) -> None:
    asg = aws.client("autoscaling")
    asg.create_launch_configuration(LaunchConfigurationName="lc", ImageId="ami-12c6146b",
                                    InstanceType="t3.micro")
    asg.create_auto_scaling_group(AutoScalingGroupName="api-asg", LaunchConfigurationName="lc",
                                  MinSize=1, MaxSize=1, AvailabilityZones=["eu-west-1a"])
    [member] = asg.describe_auto_scaling_instances()["AutoScalingInstances"]
    make_imds(instance_id=member["InstanceId"], tags={"pullboot:role": "web"})
    _config(tmp_path, cloudformation=False, tags=False)
    repo = make_repo(web_tree())
    res = run_cli("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    [complete] = aws_query.calls_for("CompleteLifecycleAction")
    assert complete["params"]["AutoScalingGroupName"] == "api-asg"
    assert complete["params"]["InstanceId"] == member["InstanceId"]


def test_no_identity_no_signal_but_a_clear_warning(aws_query: Any, make_repo: Any,
                                                   tmp_path: Path, out_dir: Path) -> None:
    # IMDS is disabled (conftest): the instance is unknown, so nothing can be signalled.
    _config(tmp_path)
    res = run_cli("run", "--source", make_repo(web_tree()).url, "--role", "web",
                  "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    assert aws_query.calls == []
    assert {s["kind"] for s in res.report["signals"]} == {"tags", "cloudformation", "lifecycle"}
    assert all(not s["ok"] and "no instance id" in s["detail"] for s in res.report["signals"])


def test_no_valid_role_still_abandons(aws: Any, aws_query: Any, make_imds: Any,
                                      make_repo: Any, tmp_path: Path) -> None:
    """A run that dies at role resolution must not leave the group waiting out its timeout."""
    instance_id = _instance(aws)
    make_imds(instance_id=instance_id, tags={
        "pullboot:role": "../../etc", "aws:autoscaling:groupName": GROUP,
        "aws:cloudformation:stack-name": STACK, "aws:cloudformation:logical-id": RESOURCE})
    _config(tmp_path)
    repo = make_repo(web_tree())
    res = run_cli("run", "--source", repo.url, "--json")
    assert res.rc == 3, res.stderr
    [complete] = aws_query.calls_for("CompleteLifecycleAction")
    assert complete["params"]["LifecycleActionResult"] == "ABANDON"
    assert complete["params"]["InstanceId"] == instance_id
    [signal] = aws_query.calls_for("SignalResource")
    assert signal["params"]["Status"] == "FAILURE"
    assert _tags(aws, instance_id)["pullboot:status"] == "error"


def test_a_strict_signal_failure_is_retried_by_only_if_changed(
        aws: Any, aws_query: Any, instance: str, make_repo: Any, tmp_path: Path,
        out_dir: Path) -> None:
    # One place decides the outcome: success is recorded only after the signals, so a run
    # that ends `error` because a strict signal failed is run again, not skipped as unchanged.
    _config(tmp_path, budget=1, strict=True, cloudformation=False, tags=False)
    aws_query.fail_next("CompleteLifecycleAction", 100)
    repo = make_repo(web_tree())
    args = ("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--only-if-changed",
            "--json")
    first = run_cli(*args)
    assert (first.rc, first.report["status"]) == (1, "error"), first.stderr
    second = run_cli(*args)
    assert second.report["status"] != "unchanged", second.stderr
    assert second.report["stats"], "the play must have run again"
