"""FakeIMDS: an IMDSv2 emulator on 127.0.0.1 (AWS_EC2_METADATA_SERVICE_ENDPOINT = ``.url``).

The instance simulator (``pullboot sim``) serves its instance's identity, tags and user-data
with it; the tests use it as their IMDS fake (``tests/fakes/imds.py`` re-exports it).

Behaviour copied from the real service (what pullboot must cope with):

* ``PUT /latest/api/token`` needs ``X-aws-ec2-metadata-token-ttl-seconds`` in 1..21600, else 400;
  a PUT carrying ``X-Forwarded-For`` is refused with 403; other methods on that path get 405.
  The token comes back as text with the TTL echoed in the same header.
* Every other path takes GET/HEAD only (405 otherwise) and needs ``X-aws-ec2-metadata-token``
  with a valid, unexpired token, else 401. With ``allow_imdsv1=True`` a request WITHOUT the
  header is served, but a present and invalid/expired token is still 401 (as on EC2).
* Tokens expire ``ttl`` seconds after issue according to ``clock`` (default ``time.monotonic``;
  inject a fake clock to test expiry without waiting).
* Instance tags are served only when "instance metadata tags" is enabled: ``tags=None`` means
  disabled, so ``/latest/meta-data/tags/instance`` is 404 and ``tags/`` is not listed.
  ``user_data=None`` means no user data: ``/latest/user-data`` is 404.
* Unknown paths are 404. Listings end without a trailing newline, like EC2.

Fault switches (all thread-safe, usable while requests are in flight): ``delay_s``,
``fail_next(n, status)``, ``expire_tokens()``, ``down()``/``up()`` (port refuses connections,
then accepts again on the same port), ``start_down=True`` (port reserved, refusing until
``up()``), and ``identity_document`` (raw bytes served instead of the generated JSON).
"""

from __future__ import annotations

import collections
import functools
import json
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

from pullboot.sim._server import FakeHTTPHandler, LoopbackService, SwitchableServer

TOKEN_PATH: Final = "/latest/api/token"  # noqa: S105 - a path, not a secret
TOKEN_HEADER: Final = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
TTL_HEADER: Final = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL_S: Final = 21600
IDENTITY_PATH: Final = "/latest/dynamic/instance-identity/document"
_FORBIDDEN_TAG_KEYS: Final = frozenset({"", ".", ".."})


class RequestRecord(NamedTuple):
    """One request as seen by the fake: method, raw path, and whether a token header was sent."""

    method: str
    path: str
    had_token: bool


def _validate_tags(tags: Mapping[str, str] | None) -> dict[str, str] | None:
    """Copy ``tags``; ValueError for keys EC2 refuses to expose in metadata (``/``, space)."""
    if tags is None:
        return None
    for key in tags:
        if key in _FORBIDDEN_TAG_KEYS or "/" in key or " " in key:
            raise ValueError(f"tag key {key!r} cannot be exposed in instance metadata")
    return dict(tags)


class FakeIMDS(LoopbackService):
    """IMDSv2 emulator; see the module docstring for the behaviour contract.

    The constructor does no I/O; ``start()`` (or ``with FakeIMDS(...) as imds``) binds the port.
    """

    def __init__(
        self,
        *,
        instance_id: str = "i-0123456789abcdef0",
        region: str = "eu-west-1",
        availability_zone: str | None = None,
        instance_type: str = "t3.micro",
        image_id: str = "ami-0abcdef1234567890",
        account_id: str = "123456789012",
        hostname: str | None = None,
        private_ip: str = "10.0.0.10",
        architecture: str = "x86_64",
        pending_time: str = "2024-01-01T00:00:00Z",
        tags: Mapping[str, str] | None = None,
        user_data: bytes | None = None,
        allow_imdsv1: bool = False,
        start_down: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
        self.instance_id = instance_id
        self.region = region
        self.availability_zone = availability_zone or f"{region}a"
        self.instance_type = instance_type
        self.image_id = image_id
        self.account_id = account_id
        self.hostname = hostname or f"ip-{private_ip.replace('.', '-')}.{domain}"
        self.private_ip = private_ip
        self.architecture = architecture
        self.pending_time = pending_time
        self._clock = clock
        self._start_down = start_down
        self._lock = threading.Lock()
        self._tags = _validate_tags(tags)
        self._user_data = user_data
        self._allow_imdsv1 = allow_imdsv1
        self._identity_override: bytes | None = None
        self._delay_s = 0.0
        self._fail_remaining = 0
        self._fail_status = 500
        self._tokens: dict[str, float] = {}
        self._tokens_issued = 0
        self._requests: list[RequestRecord] = []
        self._status_counts: collections.Counter[int] = collections.Counter()
        self._server = SwitchableServer(
            functools.partial(_IMDSHandler, fake=self), name="fake-imds"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    # -- mutable state -----------------------------------------------------------------------

    @property
    def tags(self) -> dict[str, str] | None:
        """Copy of the instance tags; None when metadata tags are disabled."""
        with self._lock:
            return None if self._tags is None else dict(self._tags)

    @tags.setter
    def tags(self, value: Mapping[str, str] | None) -> None:
        validated = _validate_tags(value)
        with self._lock:
            self._tags = validated

    @property
    def user_data(self) -> bytes | None:
        """User data served at /latest/user-data; None means 404."""
        with self._lock:
            return self._user_data

    @user_data.setter
    def user_data(self, value: bytes | None) -> None:
        with self._lock:
            self._user_data = value

    @property
    def identity_document(self) -> bytes | None:
        """Raw bytes served instead of the generated identity document (None = generated)."""
        with self._lock:
            return self._identity_override

    @identity_document.setter
    def identity_document(self, value: bytes | None) -> None:
        with self._lock:
            self._identity_override = value

    @property
    def allow_imdsv1(self) -> bool:
        """Whether requests without a token header are served."""
        with self._lock:
            return self._allow_imdsv1

    @allow_imdsv1.setter
    def allow_imdsv1(self, value: bool) -> None:
        with self._lock:
            self._allow_imdsv1 = value

    @property
    def delay_s(self) -> float:
        """Seconds every request waits before being answered (0 = none)."""
        with self._lock:
            return self._delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        if value < 0:
            raise ValueError("delay_s must be >= 0")
        with self._lock:
            self._delay_s = value

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Answer the next ``n`` requests (token PUTs included) with ``status`` and no data."""
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._fail_remaining, self._fail_status = n, status

    def expire_tokens(self) -> None:
        """Invalidate every token issued so far: later requests using them get 401."""
        with self._lock:
            self._tokens.clear()

    # -- observation -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def status_counts(self) -> collections.Counter[int]:
        """Snapshot: how many responses were sent with each status code."""
        with self._lock:
            return collections.Counter(self._status_counts)

    @property
    def tokens_issued(self) -> int:
        """How many tokens the fake has handed out."""
        with self._lock:
            return self._tokens_issued

    def clear_log(self) -> None:
        """Forget recorded requests and status counts."""
        with self._lock:
            self._requests.clear()
            self._status_counts.clear()

    # -- request handling (called from handler threads) --------------------------------------

    def _begin(self, method: str, path: str, had_token: bool) -> tuple[float, int | None]:
        """Record the request; return (delay, forced status or None)."""
        with self._lock:
            self._requests.append(RequestRecord(method, path, had_token))
            forced: int | None = None
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                forced = self._fail_status
            return self._delay_s, forced

    def _count(self, status: int) -> None:
        with self._lock:
            self._status_counts[status] += 1

    def _issue_token(self, ttl_header: str | None, forwarded: bool) -> tuple[int, bytes]:
        if forwarded:
            return 403, b"Forbidden"
        try:
            ttl = int(ttl_header or "")
        except ValueError:
            return 400, b"Bad Request"
        if not 1 <= ttl <= MAX_TTL_S:
            return 400, b"Bad Request"
        token = secrets.token_urlsafe(42)
        with self._lock:
            self._tokens[token] = self._clock() + ttl
            self._tokens_issued += 1
        return 200, token.encode()

    def _authorised(self, token: str | None) -> bool:
        with self._lock:
            if token is None:
                return self._allow_imdsv1
            expiry = self._tokens.get(token)
            if expiry is None:
                return False
            if self._clock() >= expiry:
                del self._tokens[token]
                return False
            return True

    def _lookup(self, path: str) -> bytes | None:
        """The document at ``path`` (query already stripped), or None for 404."""
        with self._lock:
            tags = None if self._tags is None else dict(self._tags)
            user_data, identity = self._user_data, self._identity_override
        if path == "/latest/user-data":
            return user_data
        if path == IDENTITY_PATH:
            return identity if identity is not None else self._identity_json()
        tag_prefix = "/latest/meta-data/tags/instance/"
        if tags is not None and path.startswith(tag_prefix) and path != tag_prefix:
            value = tags.get(urllib.parse.unquote(path[len(tag_prefix) :]))
            return None if value is None else value.encode()
        tree = self._tree(tags, user_data is not None)
        text = tree.get(path.rstrip("/") if path != "/" else "/")
        return None if text is None else text.encode()

    def _tree(self, tags: dict[str, str] | None, has_user_data: bool) -> dict[str, str]:
        leaves = {
            "ami-id": self.image_id,
            "hostname": self.hostname,
            "instance-id": self.instance_id,
            "instance-type": self.instance_type,
            "local-hostname": self.hostname,
            "local-ipv4": self.private_ip,
        }
        meta = "/latest/meta-data"
        tree = {f"{meta}/{name}": value for name, value in leaves.items()}
        listing = [*sorted(leaves), "placement/"]
        tree[f"{meta}/placement"] = "availability-zone\nregion"
        tree[f"{meta}/placement/availability-zone"] = self.availability_zone
        tree[f"{meta}/placement/region"] = self.region
        if tags is not None:
            listing.append("tags/")
            tree[f"{meta}/tags"] = "instance"
            tree[f"{meta}/tags/instance"] = "\n".join(sorted(tags))
        tree[meta] = "\n".join(listing)
        tree["/latest/dynamic"] = "instance-identity/"
        tree["/latest/dynamic/instance-identity"] = "document"
        tree["/latest"] = "\n".join(
            ["dynamic", "meta-data"] + (["user-data"] if has_user_data else [])
        )
        tree["/"] = "latest"
        return tree

    def _identity_json(self) -> bytes:
        document = {
            "accountId": self.account_id,
            "architecture": self.architecture,
            "availabilityZone": self.availability_zone,
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": self.image_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "kernelId": None,
            "pendingTime": self.pending_time,
            "privateIp": self.private_ip,
            "ramdiskId": None,
            "region": self.region,
            "version": "2017-09-30",
        }
        return json.dumps(document, indent=2).encode()


class _IMDSHandler(FakeHTTPHandler):
    """Per-connection handler; all state lives in the FakeIMDS."""

    def __init__(self, request: socket.socket, client_address: Any,
                 server: SwitchableServer, *, fake: FakeIMDS) -> None:
        self.fake = fake
        super().__init__(request, client_address, server)

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        self.read_body()  # keep the connection's framing intact whatever we answer
        fake, method = self.fake, self.command
        path = urllib.parse.urlsplit(self.path).path
        token = self.headers.get(TOKEN_HEADER)
        delay, forced = fake._begin(method, self.path, token is not None)
        if delay > 0 and self.server.pause(self.request, delay):
            self.close_connection = True
            return
        headers: dict[str, str] = {}
        content_type = "text/plain"
        if forced is not None:
            status, body = forced, b""
        elif path == TOKEN_PATH:
            if method != "PUT":
                status, body = 405, b"Method Not Allowed"
            else:
                forwarded = self.headers.get("X-Forwarded-For") is not None
                status, body = fake._issue_token(self.headers.get(TTL_HEADER), forwarded)
                if status == 200:
                    headers[TTL_HEADER] = str(self.headers.get(TTL_HEADER))
        elif method not in ("GET", "HEAD"):
            status, body = 405, b"Method Not Allowed"
        elif not fake._authorised(token):
            status, body = 401, b"Unauthorized"
        else:
            document = fake._lookup(path)
            if document is None:
                status, body = 404, b"Not Found"
            else:
                status, body = 200, document
                if path == "/latest/user-data":
                    content_type = "application/octet-stream"
        fake._count(status)
        self.send_plain(status, body, content_type=content_type, headers=headers)
