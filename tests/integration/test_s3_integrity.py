"""S3 bundles you can trust: atomic releases, checksums, signatures, retries, fallbacks.

Real ``python -m pullboot run`` processes against moto on 127.0.0.1, reached through a
FaultProxy (``AWS_ENDPOINT_URL_S3``) so faults, pacing and the request log are under the
test's control; the play is run by the real ansible. The test itself talks to moto directly
(``aws.client``), never through the proxy.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import REPO, Result, run_cli
from tests.fakes.faultproxy import S3_ENDPOINT_ENV, FaultProxy

BUCKET: Final = "pb-bundles"
KEY: Final = "boot/web.tar.gz"
URL: Final = f"s3://{BUCKET}/{KEY}"
BUNDLE_PATH: Final = f"/{BUCKET}/{KEY}"  # the path-style request target of a GET of the bundle
MARKER: Final = "ZZ-COMPLETE"  # the last member of every bundle
FAILING_FAST: Final = {"fetch": {"retry_budget": 1}}


# -- bundles -----------------------------------------------------------------------------------


def _play(label: str) -> str:
    """A playbook that leaves ``label`` in out_dir/web.txt, so a test sees which bundle ran."""
    return (
        "- name: web\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: leave the label\n      ansible.builtin.copy:\n"
        '        dest: "{{ out_dir }}/web.txt"\n'
        f'        content: "{label}\\n"\n        mode: "0644"\n'
    )


def _bundle(label: str, extra: Mapping[str, bytes] | None = None, *,
            compresslevel: int = 6) -> bytes:
    """tar.gz of playbooks/web.yml, ``extra`` files, and the marker written last."""
    members: dict[str, bytes] = {"playbooks/web.yml": _play(label).encode(), **(extra or {})}
    members[MARKER] = label.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=compresslevel) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha256_line(data: bytes) -> bytes:
    return f"{hashlib.sha256(data).hexdigest()}  web.tar.gz\n".encode()


def _is_complete(release: Path, label: str | None = None) -> bool:
    marker = release / MARKER
    return ((release / "playbooks" / "web.yml").is_file() and marker.is_file()
            and (label is None or marker.read_text() == label))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# -- environment -------------------------------------------------------------------------------


@dataclass
class S3Env:
    """The bucket in moto, the proxy pullboot goes through, and the run's paths."""

    s3: Any  # boto3 S3 client talking to moto directly
    proxy: FaultProxy
    state: Path
    out: Path
    config: Path
    runs: list[Result] = field(default_factory=list)

    def put(self, body: bytes, key: str = KEY, **kwargs: Any) -> dict[str, Any]:
        resp: dict[str, Any] = self.s3.put_object(Bucket=BUCKET, Key=key, Body=body, **kwargs)
        return resp

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Replace the config file (the one PULLBOOT_CONFIG names) with ``settings``."""
        self.config.write_text(yaml.safe_dump(dict(settings)))

    def run(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        res = run_cli("run", "--source", URL, "--role", "web", "-e", f"out_dir={self.out}",
                      "--json", *args, env=env)
        self.runs.append(res)
        return res

    @property
    def releases(self) -> Path:
        return self.state / "releases"

    @property
    def cache(self) -> Path:
        return self.state / "cache" / "s3"

    def release_names(self) -> set[str]:
        return {p.name for p in self.releases.iterdir()} if self.releases.is_dir() else set()

    def current(self) -> str:
        return Path(os.readlink(self.state / "current")).name

    def played(self) -> str:
        return (self.out / "web.txt").read_text().strip()

    def bundle_gets(self) -> list[str]:
        """Fault kind applied to each GET of the bundle itself, in order."""
        return [kind for req, kind in self.proxy.applied
                if req.method == "GET" and req.path.split("?")[0] == BUNDLE_PATH]


@pytest.fixture
def env(aws: Any, fault_proxy: Any, state_dir: Path, out_dir: Path) -> S3Env:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=BUCKET,
                     CreateBucketConfiguration={"LocationConstraint": aws.region})
    proxy = fault_proxy(env=S3_ENDPOINT_ENV)
    return S3Env(s3=s3, proxy=proxy, state=state_dir, out=out_dir,
                 config=Path(os.environ["PULLBOOT_CONFIG"]))


def _ok(res: Result) -> dict[str, Any]:
    assert res.rc == 0, res.stderr
    report = res.report
    assert report["status"] == "successful", report
    return report


def _refused(res: Result, error_type: str, *fragments: str) -> dict[str, Any]:
    report = res.report if res.stdout.startswith("{") else {}
    assert res.rc == 4, (f"exit {res.rc}, expected 4 ({error_type}); status "
                         f"{report.get('status')!r}, source {report.get('source')}, "
                         f"error {report.get('error')}\n{res.stderr[-2000:]}")
    error = report["error"]
    assert error["type"] == error_type, error
    for fragment in fragments:
        assert fragment in error["message"], error
    return report


def _wait_for(condition: Callable[[], bool], what: str, *, deadline_s: float = 30,
              proc: subprocess.Popen[str] | None = None) -> None:
    """Poll ``condition`` until true (a condition, not a sleep); fail after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{err}")
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"not {what} within {deadline_s}s")


# -- 1. SIGKILL in the middle of a fetch -------------------------------------------------------


class CurrentWatcher:
    """Resolves ``state/current`` continuously; records any moment it names an incomplete tree."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.seen: set[str] = set()
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="current-watcher", daemon=True)

    def __enter__(self) -> CurrentWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._check()  # once more after everything: the final state counts too

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._check()
            time.sleep(0.001)

    def _check(self) -> None:
        link = self.state / "current"
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return  # no current yet: nothing is pointed at
        release = (self.state / target).resolve()
        if _is_complete(release):
            self.seen.add(release.name)
            return
        # Only a violation if current still names it (a prune after a switch is not one).
        if os.readlink(link) == target:
            self.violations.append(f"current -> {target}: {sorted(_tree_names(release))}")


def _tree_names(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")] if root.is_dir() else ["<absent>"]


BIG_FILES: Final = 4
BIG_FILE_BYTES: Final = 5 << 20  # 20 MB of random bytes: gzip cannot shrink it
SLOW_LINK: Final = 2 << 20  # bytes/s: the download would take ~10 s; the kill comes after ~1 MB


def test_sigkill_mid_fetch_never_exposes_a_partial_release(env: S3Env) -> None:
    env.put(_bundle("small"))
    first = _ok(env.run())
    old = first["source"]["release"]
    assert env.played() == "small"

    data = {f"data/blob{i}.bin": os.urandom(BIG_FILE_BYTES) for i in range(BIG_FILES)}
    big = _bundle("big", data, compresslevel=1)
    assert len(big) > BIG_FILES * BIG_FILE_BYTES
    big_release = "s3-" + env.put(big)["ETag"].strip('"')

    env.proxy.throttle(SLOW_LINK)
    with CurrentWatcher(env.state) as watcher:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pullboot", "run", "--source", URL, "--role", "web",
             "-e", f"out_dir={env.out}", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env=dict(os.environ))
        part = env.cache / f"{_cached_name(env)}.part-{proc.pid}"
        try:
            _wait_for(lambda: part.is_file() and part.stat().st_size > 0,
                      f"{part.name} has bytes", proc=proc)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL

        assert env.current() == old
        leftovers = env.release_names() - {old}
        assert big_release not in leftovers
        assert all(name.startswith(".staging-") for name in leftovers), leftovers
        assert all(".part-" in p.name or p.suffix in (".bundle", ".json")
                   for p in env.cache.iterdir())

        env.proxy.throttle(None)
        second = _ok(env.run())
    assert second["source"]["release"] == big_release
    assert env.current() == big_release
    assert env.played() == "big"
    tree = env.releases / big_release
    assert _is_complete(tree, "big")
    for name, content in data.items():
        assert (tree / name).read_bytes() == content, name

    assert watcher.violations == []
    assert {old, big_release} <= watcher.seen, watcher.seen
    # The killed run's leftovers are gone once a later run has succeeded.
    assert [p.name for p in env.releases.glob(".staging-*")] == []
    assert [p.name for p in env.cache.glob("*.part-*")] == [], \
        "a killed download's .part file is never cleaned up"


def _cached_name(env: S3Env) -> str:
    bundles = list(env.cache.glob("*.bundle"))
    assert len(bundles) == 1, bundles
    return bundles[0].name


# -- 2. checksums ------------------------------------------------------------------------------


def test_sidecar_sha256_match_runs_and_mismatch_is_refused(env: S3Env) -> None:
    good = _bundle("good")
    env.put(good)
    env.put(_sha256_line(good), key=f"{KEY}.sha256")
    env.configure({"s3": {"checksum": "required"}})  # only the sidecar publishes a sha256
    first = _ok(env.run())
    assert env.played() == "good"
    before = env.release_names()

    env.put(_bundle("tampered"))  # the sidecar still names the good bundle
    report = _refused(env.run(), "IntegrityError", "sha256 mismatch")
    assert env.release_names() == before, "something of the refused bundle was committed"
    assert env.current() == first["source"]["release"]
    # The previously verified bundle stays the cached one.
    assert [p.read_bytes() for p in env.cache.glob("*.bundle")] == [good]
    assert list(env.cache.glob("*.part-*")) == []
    assert report["source"].get("stale") is not True


def test_object_checksum_is_verified_and_required_refuses_unpublished(env: S3Env) -> None:
    bundle = _bundle("checked")
    put = env.put(bundle, ChecksumAlgorithm="SHA256")
    assert base64.b64decode(put["ChecksumSHA256"]) == hashlib.sha256(bundle).digest()
    env.configure({"s3": {"checksum": "required"}, **FAILING_FAST})
    _ok(env.run())  # no sidecar: "required" is met by the object's own checksum
    assert env.played() == "checked"
    before = env.release_names()

    env.put(_bundle("unpublished"))  # no SHA256 checksum, no sidecar
    _refused(env.run(), "IntegrityError", "no published sha256")
    assert env.release_names() == before


# -- 3. signatures -----------------------------------------------------------------------------


def _raw_public(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def test_signature_with_base64_key(env: S3Env) -> None:
    key = Ed25519PrivateKey.generate()
    bundle = _bundle("signed")
    env.put(bundle)
    env.put(key.sign(bundle), key=f"{KEY}.sig")
    env.configure({"s3": {"signature_keys": [_raw_public(key)]}, **FAILING_FAST})
    first = _ok(env.run())
    assert env.played() == "signed"
    assert "signature verified" in env.runs[-1].stderr

    env.put(_bundle("tampered"))  # the old .sig stays
    _refused(env.run(), "IntegrityError", "signature does not match")
    assert env.current() == first["source"]["release"]


def test_signature_with_pem_file_key_and_require_signature(env: S3Env, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "bundle-signing.pub.pem"
    pem.write_bytes(key.public_key().public_bytes(Encoding.PEM,
                                                  PublicFormat.SubjectPublicKeyInfo))
    other = Ed25519PrivateKey.generate()
    bundle = _bundle("pem")
    env.put(bundle)
    env.put(base64.b64encode(key.sign(bundle)), key=f"{KEY}.sig")  # base64 form of a .sig
    env.configure({"s3": {"signature_keys": [_raw_public(other), str(pem)],
                          "require_signature": True}, **FAILING_FAST})
    _ok(env.run())
    assert env.played() == "pem"
    before = env.release_names()

    env.s3.delete_object(Bucket=BUCKET, Key=f"{KEY}.sig")
    env.put(_bundle("unsigned"))
    _refused(env.run(), "IntegrityError", "has no signature")
    assert env.release_names() == before


def test_require_signature_applies_to_an_already_cached_bundle(env: S3Env) -> None:
    """Turning signatures on must not keep running a bundle that was accepted unsigned."""
    env.put(_bundle("unsigned"))
    first = run_cli("plan", "--source", URL, "--role", "web", "--json")  # caches it, no play
    assert first.rc == 0, first.stderr
    key = Ed25519PrivateKey.generate()
    env.configure({"s3": {"signature_keys": [_raw_public(key)], "require_signature": True},
                   **FAILING_FAST})
    res = env.run()  # same bundle, same ETag: the GET answers 304 Not Modified
    assert res.rc == 4, f"an unsigned bundle ran with s3.require_signature on:\n{res.stderr}"
    assert res.report["error"]["type"] == "IntegrityError"


# -- 4. integrity failures keep the last good release ------------------------------------------


def _tamper_signature(env: S3Env) -> None:
    env.put(_bundle("tampered"))


def _tamper_object_checksum(env: S3Env) -> None:
    # moto ignores a caller-supplied ChecksumSHA256 on put, so the published checksum is
    # corrupted in moto's store (the server runs in this process): S3 then serves bytes
    # that do not match the checksum it publishes, like a corrupted or substituted object.
    from moto.backends import get_backend
    from moto.core.models import DEFAULT_ACCOUNT_ID

    env.put(_bundle("tampered"), ChecksumAlgorithm="SHA256")
    stored = get_backend("s3")[DEFAULT_ACCOUNT_ID]["global"].get_object(BUCKET, KEY)
    assert stored is not None and stored.checksum_algorithm == "SHA256"
    stored.checksum_value = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()


@pytest.mark.parametrize("tamper", [_tamper_signature, _tamper_object_checksum],
                         ids=["signature", "object-checksum"])
def test_integrity_failure_keeps_the_last_good_release(env: S3Env,
                                                       tamper: Callable[[S3Env], None]) -> None:
    key = Ed25519PrivateKey.generate()
    good = _bundle("good")
    env.put(good, ChecksumAlgorithm="SHA256")
    env.put(key.sign(good), key=f"{KEY}.sig")
    env.configure({"s3": {"signature_keys": [_raw_public(key)]}, **FAILING_FAST})
    first = _ok(env.run())
    previous = first["source"]["release"]
    intact = _tree(env.releases / previous)
    (env.out / "web.txt").unlink()

    tamper(env)
    res = env.run()
    report = _refused(res, "IntegrityError")  # never a silent fallback to the last good
    assert report["status"] == "error"
    assert report["source"].get("stale") is not True
    assert not (env.out / "web.txt").exists(), "a play ran although the bundle was refused"
    assert env.current() == previous
    assert env.release_names() == {previous}
    assert _tree(env.releases / previous) == intact
    assert [p.read_bytes() for p in env.cache.glob("*.bundle")] == [good]


# -- 5. source down: the last good release, or fail --------------------------------------------


def test_source_down_runs_the_last_good_release(env: S3Env) -> None:
    env.put(_bundle("good"))
    first = _ok(env.run())
    (env.out / "web.txt").unlink()
    env.configure(FAILING_FAST)

    env.proxy.down()
    stale = _ok(env.run())
    source = stale["source"]
    assert source["stale"] is True
    assert source["stale_reason"]
    assert source["release"] == first["source"]["release"]
    assert source["revision"] == first["source"]["revision"]
    assert env.played() == "good"

    res = env.run(env={"PULLBOOT_ON_SOURCE_FAILURE": "fail"})
    assert res.rc == 4, res.stderr
    assert res.report["error"]["type"] == "TransientSourceError"
    assert res.report["source"].get("stale") is not True
    assert env.current() == first["source"]["release"]


# -- 6. throttling and resets are retried ------------------------------------------------------


@pytest.mark.parametrize(("arm", "fault", "count"), [
    (lambda p: p.error_next(3), "error", 3),
    (lambda p: p.reset_next(2), "reset", 2),
], ids=["503-slowdown", "connection-reset"])
def test_slowdown_and_resets_are_retried(env: S3Env, arm: Callable[[FaultProxy], None],
                                         fault: str, count: int) -> None:
    env.put(_bundle("retried"))
    arm(env.proxy)
    _ok(env.run())
    assert env.played() == "retried"
    assert env.proxy.pending_faults == 0
    assert env.bundle_gets() == [fault] * count + ["pass"]


# -- 7. conditional GET ------------------------------------------------------------------------


def test_unchanged_bundle_is_not_downloaded_again(env: S3Env) -> None:
    first_etag = env.put(_bundle("one"))["ETag"].strip('"')
    first = _ok(env.run())
    assert first["source"]["revision"] == first_etag
    (cached,) = env.cache.glob("*.bundle")
    stat = cached.stat()

    env.proxy.clear_log()
    again = _ok(env.run())
    assert again["source"]["revision"] == first_etag
    assert again["source"]["release"] == first["source"]["release"]
    # One request, answered 304 (no body, so no sidecar or signature was asked for either).
    assert len(env.proxy.requests) == 1, env.proxy.requests
    assert env.bundle_gets() == ["pass"]
    assert "unchanged (304)" in env.runs[-1].stderr
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        stat.st_ino, stat.st_mtime_ns, stat.st_size)

    changed = _bundle("two")
    second_etag = env.put(changed)["ETag"].strip('"')
    third = _ok(env.run())
    assert third["source"]["revision"] == second_etag != first_etag
    assert env.played() == "two"
    assert cached.read_bytes() == changed


# -- 8. version pin ----------------------------------------------------------------------------


def test_version_pin_runs_the_pinned_version(env: S3Env) -> None:
    env.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    v1 = env.put(_bundle("v1"))["VersionId"]
    v2 = env.put(_bundle("v2"))["VersionId"]
    assert v1 != v2
    env.configure({"s3": {"version_id": v1}})
    report = _ok(env.run())
    assert env.played() == "v1"
    assert report["source"]["revision"] == v1


# -- 9. limits ---------------------------------------------------------------------------------


def test_member_limit(env: S3Env) -> None:
    files = {f"files/f{i}.txt": b"x" for i in range(8)}  # + playbook + marker = 10 members
    env.put(_bundle("many", files))
    res = env.run(env={"PULLBOOT_S3_MAX_MEMBERS": "3"})
    _refused(res, "IntegrityError", "more than 3 members")  # counted while streaming
    assert [n for n in env.release_names() if not n.startswith(".")] == []
    assert list(env.releases.glob(".staging-*")) == []
