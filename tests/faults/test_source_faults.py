"""Source faults: S3 errors and truncation, git cut mid-transfer, huge histories."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import git, run_cli, web_tree
from tests.fakes.faultproxy import S3_ENDPOINT_ENV
from tests.fakes.githttp import GitHttpServer


def _bundle(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def bucket(aws: Any) -> Any:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="boot", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="boot", Key="web.tar.gz",
                  Body=_bundle({**web_tree(), "pad.bin": os.urandom(256 * 1024)}))
    return s3


def _config(tmp_path: Path, **settings: Any) -> None:
    (tmp_path / "pullboot.yml").write_text(yaml.safe_dump(settings))


S3_ARGS = ("run", "--source", "s3://boot/web.tar.gz", "--role", "web", "--json")


def test_s3_no_such_key_fails_fast(bucket: Any, fault_proxy: Any) -> None:
    proxy = fault_proxy(env=S3_ENDPOINT_ENV)
    res = run_cli("run", "--source", "s3://boot/nope.tar.gz", "--role", "web", "--json")
    assert res.rc == 4
    assert "NoSuchKey" in res.report["error"]["message"]
    assert "does not exist" in res.report["error"]["hint"]
    assert len([r for r in proxy.requests if r.method == "GET"]) == 1, "a 404 is not retried"


def test_s3_access_denied_never_falls_back(bucket: Any, fault_proxy: Any, out_dir: Path) -> None:
    proxy = fault_proxy(env=S3_ENDPOINT_ENV)
    args = (*S3_ARGS, "-e", f"out_dir={out_dir}")
    assert run_cli(*args).rc == 0
    proxy.error_next(5, status=403, code="AccessDenied", message="Access Denied")
    res = run_cli(*args)
    assert res.rc == 4
    assert res.report["error"]["type"] == "AuthError"
    assert res.report["source"]["stale"] is False


def test_s3_truncated_download_is_retried(bucket: Any, fault_proxy: Any, out_dir: Path) -> None:
    proxy = fault_proxy(env=S3_ENDPOINT_ENV)
    proxy.truncate_next(1, after_bytes=4096)
    res = run_cli(*S3_ARGS, "-e", f"out_dir={out_dir}")
    assert res.rc == 0, res.stderr
    gets = [r for r in proxy.requests if r.method == "GET" and "web.tar.gz" in r.path]
    assert len(gets) >= 2
    assert "download interrupted" in res.stderr


def _big_repo(make_repo: Any) -> Any:
    repo = make_repo(web_tree())
    repo.commit({"blob.txt": os.urandom(300 * 1024).hex()}, "big")
    return repo


def test_git_server_gone_mid_transfer(make_repo: Any, tmp_path: Path, fault_proxy: Any,
                                      out_dir: Path) -> None:
    repo = _big_repo(make_repo)
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(served / "r.git")],
                   check=True)
    _config(tmp_path, fetch={"retry_budget": 2})
    with GitHttpServer(served) as server:
        proxy = fault_proxy(server.url)
        url = f"git+{proxy.url}/r.git"
        args = ("run", "--source", url, "--role", "web", "-e", f"out_dir={out_dir}", "--json")
        good = run_cli(*args)
        assert good.rc == 0, good.stderr
        subprocess.run(["git", "-C", str(served / "r.git"), "fetch", "-q", str(repo.path),
                        "+main:main"], check=True)
        repo.commit({"blob.txt": os.urandom(300 * 1024).hex()}, "another big one")
        subprocess.run(["git", "-C", str(served / "r.git"), "fetch", "-q", str(repo.path),
                        "+main:main"], check=True)
        # Every request in the retry budget is cut after 20 KB: the pack never arrives.
        proxy.truncate_next(50, after_bytes=20_000)
        cut = run_cli(*args)
    assert cut.rc == 0, cut.stderr
    assert cut.report["source"]["stale"] is True
    assert cut.report["source"]["release"] == good.report["source"]["release"]
    assert cut.report["source"]["stale_reason"]


def test_huge_history_is_fetched_shallow(make_repo: Any, state_dir: Path,
                                         out_dir: Path) -> None:
    repo = make_repo(web_tree())
    for i in range(30):
        repo.commit({"blob.txt": os.urandom(128 * 1024).hex()}, f"revision {i}")
    git(repo.path, "gc", "-q")
    origin_size = _du(repo.path / ".git")
    res = run_cli("run", "--source", repo.url, "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json")
    assert res.rc == 0, res.stderr
    cache = next((state_dir / "cache" / "git").iterdir())
    assert git(cache, "rev-list", "--count", "HEAD") == "1"
    assert _du(cache / ".git") < origin_size / 5


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- dir sources holding what cannot be hashed or copied (issue 12) --------------------------


def _dir_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for rel, content in web_tree().items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(content)
    return src


def _make_special(path: Path, kind: str) -> Any:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return sock
    else:
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # as /dev/zero
        except PermissionError:
            pytest.skip("mknod needs CAP_MKNOD")
    return None


@pytest.mark.parametrize(("kind", "shown"), [
    ("fifo", "named pipe (FIFO)"), ("socket", "socket"), ("device", "device file")])
def test_dir_source_with_a_special_file_is_refused(tmp_path: Path, out_dir: Path, kind: str,
                                                   shown: str) -> None:
    # A FIFO blocked the hash forever (and SIGTERM with it); /dev/zero never ends.
    src = _dir_source(tmp_path)
    (src / "playbooks" / "files").mkdir()
    keep = _make_special(src / "playbooks" / "files" / "thing", kind)
    try:
        res = run_cli("run", "--source", str(src), "--role", "web", "-e",
                      f"out_dir={out_dir}", "--json", timeout=60)
    finally:
        if keep is not None:
            keep.close()
    assert res.rc == 4, res.stderr
    error = res.report["error"]
    assert error["type"] == "SourceError"
    assert f"holds a {shown} at 'playbooks/files/thing'" in error["message"]
    assert "remove it" in error["hint"]
    assert "Traceback" not in res.stderr
    assert not (out_dir / "web.txt").exists()


@pytest.mark.parametrize("where", ["file", "dir", "link-target"])
def test_dir_source_with_a_non_utf8_name_is_refused(tmp_path: Path, out_dir: Path,
                                                    where: str) -> None:
    src = _dir_source(tmp_path)
    bad = os.fsdecode(b"caf\xe9")
    if where == "file":
        (src / "playbooks" / f"{bad}.yml").write_text("x\n")
    elif where == "dir":
        (src / bad).mkdir()
    else:
        (src / "link").symlink_to(bad)
    res = run_cli("run", "--source", str(src), "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json", timeout=60)
    assert res.rc == 4, res.stderr
    assert "is not UTF-8" in res.report["error"]["message"]
    assert "caf\\xe9" in res.report["error"]["message"]
    assert "Traceback" not in res.stderr


def test_dir_source_with_links_and_skipped_specials_runs(tmp_path: Path, out_dir: Path) -> None:
    # Links (also to a dir) are copied as links; a FIFO under .git is never looked at.
    src = _dir_source(tmp_path)
    (src / "site.yml").symlink_to("playbooks/web.yml")
    (src / "plays").symlink_to("playbooks")
    (src / ".git").mkdir()
    os.mkfifo(src / ".git" / "fifo")
    res = run_cli("run", "--source", str(src), "--role", "web", "-e", f"out_dir={out_dir}",
                  "--json", timeout=120)
    assert res.rc == 0, res.stderr
    assert (out_dir / "web.txt").exists()
