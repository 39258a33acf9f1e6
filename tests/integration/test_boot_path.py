"""The core boot path end to end: real IMDS fake, git repos, moto, ansible-runner."""

from __future__ import annotations

import gzip
import io
import tarfile
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest

from pullboot.roles import ROLE_PATTERN
from tests.conftest import FAIL_PLAY, all_files, run_cli, web_tree


def test_git_source_with_role_from_imds_tag(make_repo: Any, make_imds: Any, state_dir: Path,
                                            out_dir: Path) -> None:
    repo = make_repo(web_tree())
    imds = make_imds(tags={"pullboot:role": "web", "Name": "web-1"})
    res = run_cli("run", "--source", repo.url, "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    report = res.report
    assert report["status"] == "successful"
    assert report["exit_code"] == 0
    assert report["roles"] == [{"name": "web", "origin": "imds-tag:pullboot:role"}]
    assert report["source"]["revision"] == repo.head
    assert report["source"]["kind"] == "git"
    assert report["instance"]["id"] == imds.instance_id
    assert report["instance"]["region"] == "eu-west-1"
    assert report["instance"]["availability_zone"] == "eu-west-1a"
    # 3 tasks: copy (changed), debug (ok), command with changed_when false (ok)
    assert report["stats"]["localhost"]["ok"] == 3
    assert report["stats"]["localhost"]["changed"] == 1
    assert report["stats"]["localhost"]["failed"] == 0
    assert (out_dir / "web.txt").read_text() == f"roles=web id={imds.instance_id}\n"
    assert Path(report["events_file"]).is_file()
    assert Path(report["events_file"]).parent.parent == state_dir / "runs"
    saved = (state_dir / "runs" / report["run_id"] / "report.json").read_text()
    assert report["run_id"] in saved


def _cloud_config() -> bytes:
    return b"#cloud-config\npackages: [jq]\npullboot:\n  role: web\n  vars: {env: prod}\n"


def _mime() -> bytes:
    msg = MIMEMultipart()
    msg.attach(MIMEText("#!/bin/bash\necho hi\n", "x-shellscript"))
    msg.attach(MIMEText(_cloud_config().decode(), "cloud-config"))
    return msg.as_bytes()


@pytest.mark.parametrize("user_data", [
    pytest.param(b"pullboot:\n  role: web\n  vars: {env: prod}\n", id="yaml"),
    pytest.param(b'{"pullboot": {"role": "web", "vars": {"env": "prod"}}}', id="json"),
    pytest.param(_cloud_config(), id="cloud-config"),
    pytest.param(gzip.compress(_cloud_config()), id="gzip"),
    pytest.param(_mime(), id="mime-multipart"),
])
def test_role_from_user_data_formats(user_data: bytes, make_repo: Any, make_imds: Any) -> None:
    repo = make_repo(web_tree())
    make_imds(tags={"pullboot:role": "ignored-lower-precedence"}, user_data=user_data)
    res = run_cli("plan", "--source", repo.url, "--json")
    assert res.rc == 0, res.stderr
    plan = res.report
    assert plan["roles"] == [{"name": "web", "origin": "user-data"}]
    assert plan["vars"] == {"env": "user-data"}
    assert plan["playbooks"] == ["playbooks/web.yml"]


def test_role_from_ec2_api_tag_when_imds_tags_disabled(aws: Any, make_repo: Any,
                                                      make_imds: Any) -> None:
    ec2 = aws.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    ec2.create_tags(Resources=[instance["InstanceId"]], Tags=[
        {"Key": "pullboot:role", "Value": "web"}, {"Key": "pullboot:var:env", "Value": "stg"}])
    make_imds(instance_id=instance["InstanceId"], tags=None)  # metadata tags not enabled
    repo = make_repo(web_tree())
    res = run_cli("plan", "--source", repo.url, "--json")
    assert res.rc == 0, res.stderr
    assert res.report["roles"] == [{"name": "web", "origin": "ec2-api-tag:pullboot:role"}]
    assert res.report["vars"] == {"env": "ec2-api-tag:pullboot:var:env"}


def _bundle(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("versioned", [False, True], ids=["etag", "version-id"])
def test_s3_bundle_per_role(versioned: bool, aws: Any, out_dir: Path) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="bundles", CreateBucketConfiguration={
        "LocationConstraint": "eu-west-1"})
    if versioned:
        s3.put_bucket_versioning(Bucket="bundles",
                                 VersioningConfiguration={"Status": "Enabled"})
    put = s3.put_object(Bucket="bundles", Key="roles/web.tar.gz", Body=_bundle(web_tree()))
    expected = put["VersionId"] if versioned else put["ETag"].strip('"')
    res = run_cli("run", "--source", "s3://bundles/roles/{role}.tar.gz", "--role", "web",
                  "-e", f"out_dir={out_dir}", "--json")
    assert res.rc == 0, res.stderr
    assert res.report["source"]["kind"] == "s3"
    assert res.report["source"]["revision"] == expected
    assert (out_dir / "web.txt").exists()


def test_failing_task_is_reported(make_repo: Any, state_dir: Path) -> None:
    repo = make_repo({"playbooks/web.yml": FAIL_PLAY})
    res = run_cli("run", "--source", repo.url, "--role", "web", "--json")
    assert res.rc == 1
    report = res.report
    assert report["status"] == "failed"
    assert report["exit_code"] == 1
    assert report["failures"] == [{"play": "broken", "task": "this task breaks",
                                   "host": "localhost", "message": "the widget is broken"}]
    events = Path(report["events_file"]).read_text().splitlines()
    assert len(events) == report["event_count"]
    names = [line.split('"event": "', 1)[1].split('"', 1)[0] for line in events]
    assert "runner_on_failed" in names
    assert names[0] == "playbook_on_start"
    assert names[-1] == "playbook_on_stats"
    assert "the widget is broken" in res.stderr  # failures are shown even off a TTY


@pytest.mark.parametrize("value", ["../../etc", "web;touch x", "", "  "],
                         ids=["dotdot", "shell", "empty", "blank"])
def test_hostile_role_tag_refused_before_fetch(value: str, make_repo: Any, make_imds: Any,
                                               state_dir: Path, tmp_path: Path) -> None:
    repo = make_repo(web_tree())
    make_imds(tags={"pullboot:role": value})
    res = run_cli("run", "--source", repo.url, "--json")
    assert res.rc == 3, res.stderr
    error = res.report["error"]
    assert repr(value) in error["message"]
    assert ROLE_PATTERN in error["hint"]
    assert not list((state_dir / "cache").rglob("*")), "something was fetched"
    assert not list((state_dir / "releases").iterdir())
    assert not (tmp_path / "x").exists() and not Path("x").exists()


def test_role_without_playbook_lists_available(make_repo: Any) -> None:
    repo = make_repo(web_tree(**{"playbooks/db.yml": "- hosts: all\n  tasks: []\n"}))
    res = run_cli("run", "--source", repo.url, "--role", "cache", "--json")
    assert res.rc == 4
    assert "cache" in res.report["error"]["message"]
    assert "db, web" in res.report["error"]["message"]


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/abs-escape.txt"])
def test_bundle_escaping_the_tree_is_refused(member: str, aws: Any, tmp_path: Path,
                                             state_dir: Path) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="evil-bundles",
                     CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="evil-bundles", Key="web.tar.gz",
                  Body=_bundle({**web_tree(), member: "pwned"}))
    before = set(tmp_path.parent.rglob("escape.txt"))
    res = run_cli("run", "--source", "s3://evil-bundles/web.tar.gz", "--role", "web", "--json")
    assert res.rc == 4, res.stderr
    assert "member" in res.report["error"]["message"]
    assert not list((state_dir / "releases").iterdir())
    assert set(tmp_path.parent.rglob("escape.txt")) == before
    assert not Path("/tmp/abs-escape.txt").exists()


def test_plan_shows_origins_and_runs_nothing(make_repo: Any, make_imds: Any, state_dir: Path,
                                             out_dir: Path) -> None:
    repo = make_repo(web_tree())
    make_imds(tags={"pullboot:role": "web", "pullboot:var:env": "prod"})
    res = run_cli("plan", "--source", repo.url, "-e", f"out_dir={out_dir}")
    assert res.rc == 0, res.stderr
    assert "role       web  <- imds-tag:pullboot:role" in res.stdout
    assert "var        env  <- imds-tag:pullboot:var:env" in res.stdout
    assert "var        out_dir  <- cli" in res.stdout
    assert f"setting    source = '{repo.url}'  <- cli" in res.stdout
    assert repo.head in res.stdout
    assert not (out_dir / "web.txt").exists()
    assert not list((state_dir / "runs").iterdir())
    assert not (state_dir / "current").exists()


def test_environment_is_not_left_on_disk(make_repo: Any, state_dir: Path, out_dir: Path) -> None:
    canary = "canary-3f9a1c7e-not-on-disk"
    repo = make_repo(web_tree())
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  env={"PULLBOOT_TEST_CANARY": canary})
    assert res.rc == 0, res.stderr
    files = all_files(state_dir)
    assert any(p.name == "command" for p in files), "expected ansible-runner artifacts"
    leaked = [p for p in files if canary.encode() in p.read_bytes()]
    assert leaked == []


def test_status_lists_runs(make_repo: Any, out_dir: Path) -> None:
    repo = make_repo(web_tree())
    ok = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                 "--json")
    bad = run_cli("run", "--source", repo.url, "--role", "nope", "--json")
    assert (ok.rc, bad.rc) == (0, 4)
    table = run_cli("status")
    assert table.rc == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["RUN", "STATUS"]
    assert bad.report["run_id"] in lines[1] and "error" in lines[1]
    assert ok.report["run_id"] in lines[2] and "successful" in lines[2]
    as_json = run_cli("status", "--json")
    assert [r["run_id"] for r in as_json.report] == [bad.report["run_id"], ok.report["run_id"]]


def test_no_role_anywhere_lists_places(make_repo: Any, imds: Any) -> None:
    repo = make_repo(web_tree())
    res = run_cli("run", "--source", repo.url, "--json")
    assert res.rc == 3
    message = res.report["error"]["message"]
    for place in ("--role", "PULLBOOT_ROLE", "user-data", "pullboot:role", "config file",
                  "local.yml"):
        assert place in message
