"""Every kind of secret at once, searched for everywhere a result can end up.

An SSM SecureString (secret_vars), a git HTTPS token (git.token) and a
no_log value from a file outside the tree are all used by one play whose
results are shipped to S3. None may appear in any file under the state dir,
any line pullboot printed, or any object shipped to the results bucket.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import all_files, run_cli
from tests.fakes.githttp import GitHttpServer

SSM_CANARY = "canary-ssm-0b7e44d1"
TOKEN_CANARY = "canary-token-5e9c3a17"
NOLOG_CANARY = "canary-nolog-c8d2f690"


def _play(secret_file: Path) -> str:
    return f"""\
- hosts: all
  gather_facts: false
  tasks:
    - name: careless with the ssm secret
      ansible.builtin.debug:
        msg: "password {{{{ db_password }}}}"
    - name: quiet with a file secret
      ansible.builtin.command: /bin/echo {{{{ lookup('file', '{secret_file}') }}}}
      no_log: true
      changed_when: false
"""


def test_no_canary_anywhere(aws: Any, make_repo: Any, tmp_path: Path, state_dir: Path) -> None:
    secret_file = tmp_path / "outside" / "secret"
    secret_file.parent.mkdir()
    secret_file.write_text(NOLOG_CANARY)
    repo = make_repo({"playbooks/web.yml": _play(secret_file)})
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(served / "b.git")],
                   check=True)
    aws.client("ssm").put_parameter(Name="/c/db", Value=SSM_CANARY, Type="SecureString")
    aws.client("ssm").put_parameter(Name="/c/token", Value=TOKEN_CANARY, Type="SecureString")
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="results", CreateBucketConfiguration={
        "LocationConstraint": "eu-west-1"})
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump({
        "secret_vars": {"db_password": "ssm:/c/db"}, "git": {"token": "ssm:/c/token"},
        "results": {"s3": "s3://results/runs"}}))
    with GitHttpServer(served, token=TOKEN_CANARY) as server:
        res = run_cli("run", "--source", f"git+{server.url}/b.git", "--role", "web", "--json",
                      "-vv")
    assert res.rc == 0, res.stderr
    assert res.report["shipped"]["ok"] is True
    canaries = (SSM_CANARY, TOKEN_CANARY, NOLOG_CANARY)
    printed = res.stdout + res.stderr
    assert [c for c in canaries if c in printed] == []
    leaked = [p for p in all_files(state_dir)
              if any(c.encode() in p.read_bytes() for c in canaries)]
    assert leaked == []
    objects = [o["Key"] for o in s3.list_objects_v2(Bucket="results")["Contents"]]
    assert len(objects) == 2
    for key in objects:
        body = s3.get_object(Bucket="results", Key=key)["Body"].read()
        text = gzip.decompress(body) if key.endswith(".gz") else body
        assert [c for c in canaries if c.encode() in text] == [], key
    assert b"password ********" in gzip.decompress(s3.get_object(
        Bucket="results", Key=next(k for k in objects if k.endswith(".gz")))["Body"].read())


def test_decompression_bomb_from_s3(aws: Any, tmp_path: Path, state_dir: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("playbooks/web.yml")
        info.size = 64 * 1024 * 1024  # 64 MiB of zeros: about 64 KiB compressed
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    assert len(buf.getvalue()) < 1024 * 1024
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="boom", CreateBucketConfiguration={
        "LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="boom", Key="web.tar.gz", Body=buf.getvalue())
    (tmp_path / "pullboot.yml").write_text("s3:\n  max_bytes: 16777216\n")
    res = run_cli("run", "--source", "s3://boom/web.tar.gz", "--role", "web", "--json")
    assert res.rc == 4, res.stderr
    assert "limit 16777216" in res.report["error"]["message"]
    assert not list((state_dir / "releases").iterdir())
