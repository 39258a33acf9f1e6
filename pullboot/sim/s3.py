"""S3 for the simulator: moto's server on 127.0.0.1, and publishing a bundle into it.

moto is an optional dependency (the ``sim`` extra); it is imported only when a server starts,
so a simulated boot from Git or a directory never needs it. The tests use :class:`MotoServer`
too (``tests/fakes/moto.py`` re-exports it).

MotoServer: moto 5.x's ThreadedMotoServer on 127.0.0.1 with an ephemeral port.

Facts this relies on (checked against moto 5.2.5 on this machine):

* ``ThreadedMotoServer(ip_address="127.0.0.1", port=0)`` works: werkzeug binds port 0 and
  ``get_host_and_port()`` returns the real port once ``start()`` has returned (start() blocks
  until the server object exists). Its defaults are 0.0.0.0:5000, hence explicit arguments.
* If werkzeug fails to bind, the exception dies in moto's thread and ``start()`` waits forever;
  with 127.0.0.1:0 the bind cannot fail for "address in use", so that path is not guarded.
* ``stop()`` shuts werkzeug's loop down and werkzeug closes the listening socket.
* ``POST /moto-api/reset`` answers ``{"status": "ok"}`` and empties every backend.
* moto picks the service from the SigV4 credential scope, not the Host header, so requests
  relayed by FaultProxy or FakeAwsQuery (Host = the relay) still land in the right backend.
* The first EC2 call costs about 3 s (backend load); S3 is fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from pullboot.errors import SimError
from pullboot.sim import SIM_EXTRA_HINT
from pullboot.sim._server import LOOPBACK

DUMMY_ACCESS_KEY: Final = "testing"
# moto accepts any credentials; botocore only needs some to sign with.
DUMMY_SECRET_KEY: Final = "testing"  # noqa: S105 - a dummy, by design


class MotoServer:
    """A moto server on 127.0.0.1:<ephemeral>; the constructor does no I/O."""

    def __init__(self, *, region: str = "eu-west-1") -> None:
        self.region = region
        self._server: Any = None
        self._port: int | None = None

    def start(self) -> None:
        """Start the server thread; returns once the port is bound and serving."""
        if self._server is not None:
            raise RuntimeError("moto server already started")
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise SimError(f"an S3 source needs moto's server, which is not installed ({exc})",
                           hint=SIM_EXTRA_HINT) from exc
        server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        if host != LOOPBACK or port == 0:
            server.stop()
            raise RuntimeError(f"moto bound {host}:{port}, expected {LOOPBACK}:<ephemeral>")
        self._server, self._port = server, port

    def stop(self) -> None:
        """Stop the server and close its socket; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port moto listens on; RuntimeError before ``start()``."""
        if self._port is None:
            raise RuntimeError("start() first")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.port}"

    def reset(self) -> None:
        """Empty every moto backend (``POST /moto-api/reset``); RuntimeError if moto refuses."""
        # self.url is always http://127.0.0.1:PORT.
        request = urllib.request.Request(  # noqa: S310
            f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status = json.loads(response.read() or b"{}").get("status")
        if status != "ok":
            raise RuntimeError(f"moto reset answered {status!r}")

    def env(self) -> dict[str, str]:
        """Env vars that send every boto3 client here with dummy credentials and the region."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
        }


# -- publishing a bundle ------------------------------------------------------------------------

# Version control and cache dirs are not part of a playbook tree (as for directory sources).
_SKIP_DIRS: Final = frozenset({".git", ".hg", ".svn", "__pycache__", ".molecule", ".venv",
                               ".tox", ".mypy_cache", ".ruff_cache", ".pytest_cache"})


def bundle_keys(source_url: str, roles: list[str]) -> tuple[str, list[str]]:
    """(bucket, keys) a source URL names: one key per role when it has ``{role}``."""
    from pullboot.sources.s3 import parse_s3_url

    bucket, template = parse_s3_url(source_url)
    if "{role}" not in template:
        return bucket, [template]
    if not roles:
        raise SimError(f"{source_url} has {{role}} but the instance has no role",
                       hint="give --role (or the pullboot:role tag)")
    return bucket, list(dict.fromkeys(template.replace("{role}", r) for r in roles))


def pack(tree: Path, key: str) -> bytes:
    """``tree`` as a .tar.gz (or .zip, by ``key``'s suffix), files at the archive's root."""
    files = sorted(_tree_files(tree))
    buf = io.BytesIO()
    if key.lower().endswith(".zip"):
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, path.relative_to(tree).as_posix())
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in files:
                tar.add(path, path.relative_to(tree).as_posix(), recursive=False)
    return buf.getvalue()


def publish(endpoint: str, *, region: str, source_url: str, roles: list[str],
            tree: Path) -> list[str]:
    """Create the bucket in the S3 server at ``endpoint`` and upload ``tree`` as the bundle(s).

    Each bundle gets a ``<key>.sha256`` sidecar, which pullboot verifies (``s3.checksum``).
    Returns the s3:// URLs written.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    if not tree.is_dir():
        raise SimError(f"bundle directory {tree} does not exist",
                       hint="give --bundle DIR: the playbook tree to serve from S3")
    bucket, keys = bundle_keys(source_url, roles)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region,
                      aws_access_key_id=DUMMY_ACCESS_KEY,
                      aws_secret_access_key=DUMMY_SECRET_KEY)
    params: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": region}
    written = []
    try:
        s3.create_bucket(**params)
        for key in keys:
            body = pack(tree, key)
            digest = hashlib.sha256(body).hexdigest()
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            s3.put_object(Bucket=bucket, Key=f"{key}.sha256",
                          Body=f"{digest}  {key.rsplit('/', 1)[-1]}\n".encode())
            written.append(f"s3://{bucket}/{key}")
    except (BotoCoreError, ClientError) as exc:
        raise SimError(f"cannot publish {source_url} to the S3 emulator: {exc}",
                       hint="check the bucket name and key in --source") from exc
    return written


def _tree_files(tree: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        out.extend(Path(dirpath, f) for f in filenames if not f.endswith(".pyc"))
    return out
