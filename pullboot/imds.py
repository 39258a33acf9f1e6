"""A small IMDSv2 client that copes with boot-time networking.

Why our own: botocore's IMDS fetchers cover credentials and region only,
treat 404 as a failure and never refresh an expired token. This client:

* gets a session token (PUT with a TTL), reuses it, and refreshes it on 401;
* answers ``None`` for 404 (absent is a normal answer, e.g. no user-data);
* retries connection errors, timeouts and 5xx with exponential backoff and
  full jitter (:func:`pullboot.retry.retry`), inside a total wait budget,
  because instances often start before the link-local route is up;
* uses IMDSv1 only when explicitly allowed.

IMDS is a local, link-local service and its answers are untrusted input:

* one plain ``http.client`` connection to the configured endpoint per
  request, no proxy, and **no redirects** (a 30x is an error), so the token
  is only ever sent to that endpoint;
* every request, headers and body included, ends within ``timeout`` seconds
  wall-clock (a watchdog shuts the socket: a server dripping one byte a
  second cannot stretch it), and every call within its budget;
* an answer larger than :data:`MAX_ANSWER_BYTES` is refused, and the token
  must be printable ASCII of at most :data:`MAX_TOKEN_LEN` characters (no
  CR/LF that could inject headers).

The endpoint honours ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` and
``AWS_EC2_METADATA_DISABLED`` like the AWS SDKs do. Tokens are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from pullboot.errors import Canceled, IdentityError, ImdsUnavailable
from pullboot.retry import Backoff, Cancel, Deadline, retry

if TYPE_CHECKING:
    import http.client

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT: Final = "http://169.254.169.254"
TOKEN_PATH: Final = "/latest/api/token"  # noqa: S105 - a URL path, not a secret
TTL_HEADER: Final = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER: Final = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
# Once IMDS has answered, later calls get a short budget of their own: the
# long boot budget is for waiting for the network, not for a flaky answer.
AFTER_FIRST_CONTACT_BUDGET: Final = 10.0
# EC2 caps user-data at 16 KiB raw and a tag value at 256 chars; the identity
# document is ~500 bytes. 1 MiB leaves room for any real answer.
MAX_ANSWER_BYTES: Final = 1 << 20
# Real tokens are ~56 base64 characters.
MAX_TOKEN_LEN: Final = 1024
_TOKEN_RE: Final = re.compile(r"^[\x21-\x7e]+$")


def imds_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``AWS_EC2_METADATA_DISABLED`` says so (as the AWS SDKs read it)."""
    env = os.environ if environ is None else environ
    return env.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true"


def imds_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The IMDS base URL: ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` or the link-local default."""
    env = os.environ if environ is None else environ
    return env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class ImdsOptions:
    """How hard to try: per-request timeout, total budget, token TTL, IMDSv1 fallback."""

    endpoint: str = DEFAULT_ENDPOINT
    timeout: float = 2.0
    budget: float = 120.0
    token_ttl: int = 21600
    allow_v1: bool = False
    backoff_base: float = 0.2
    backoff_cap: float = 5.0


class _Retry(Exception):
    """A failure worth retrying (connection refused, timeout, 5xx)."""


class ImdsClient:
    """IMDSv2 client. Construction does no I/O; the first ``get`` fetches a token.

    All calls share ``budget``, counted from the first: once IMDS has answered,
    one call may retry for at most :data:`AFTER_FIRST_CONTACT_BUDGET` of it,
    and once it is spent a call makes one attempt (``timeout``) and no more.

    ``cancel`` (the run's SIGTERM flag) ends the retry waits at once; a
    request in flight ends within ``timeout``.
    """

    def __init__(
        self,
        options: ImdsOptions,
        *,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        cancel: Cancel = None,
    ) -> None:
        self._opt = options
        self._sleep = sleep
        self._clock = clock
        self._cancel = cancel
        self._token: str | None = None
        self._token_expires = 0.0
        self._v1 = False
        self._contacted = False
        # Every call of this client shares one budget, started by the first call.
        self._overall: Deadline | None = None
        parts = urlsplit(options.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
            raise IdentityError(f"IMDS endpoint {options.endpoint!r} is not http://HOST[:PORT]",
                                hint="set AWS_EC2_METADATA_SERVICE_ENDPOINT to a base URL "
                                "such as http://169.254.169.254")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port

    def get(self, path: str) -> bytes | None:
        """GET ``path`` (e.g. ``/latest/user-data``); ``None`` if IMDS says 404."""
        return self._with_retries(lambda: self._get_once(path), path)

    @property
    def spent(self) -> bool:
        """True once this client's ``budget`` has run out (later calls get one attempt each)."""
        return self._overall is not None and self._overall.expired()

    def get_text(self, path: str) -> str | None:
        """Like :meth:`get`, decoded as UTF-8 and stripped."""
        raw = self.get(path)
        return None if raw is None else raw.decode("utf-8", "replace").strip()

    # -- internals -----------------------------------------------------------

    def _with_retries(self, attempt: Callable[[], bytes | None], what: str) -> bytes | None:
        if self._overall is None:
            self._overall = Deadline.after(self._opt.budget, cancel=self._cancel,
                                           clock=self._clock, sleep=self._sleep)
        deadline = self._overall
        if self._contacted:
            deadline = deadline.within(AFTER_FIRST_CONTACT_BUDGET)
        budget = AFTER_FIRST_CONTACT_BUDGET if self._contacted else self._opt.budget
        tries = 0

        def once(n: int) -> bytes | None:
            nonlocal tries
            tries = n
            return attempt()

        try:
            result = retry(once, retryable=lambda e: isinstance(e, _Retry), deadline=deadline,
                           backoff=Backoff(self._opt.backoff_base, self._opt.backoff_cap),
                           what=f"IMDS {what}")
        except _Retry as exc:
            if deadline.canceled():
                raise Canceled(f"canceled by a signal while waiting for IMDS ({what})") from None
            raise ImdsUnavailable(
                f"IMDS at {self._opt.endpoint} did not answer {what} within {budget:.0f}s "
                f"({tries} tries; last: {exc})",
                hint="check that the instance metadata service is enabled "
                "(HttpEndpoint=enabled), or set imds.enabled: false / "
                "AWS_EC2_METADATA_DISABLED=true when not on EC2",
            ) from None
        self._contacted = True
        return result
    def _get_once(self, path: str) -> bytes | None:
        headers = {}
        token = self._current_token()
        if token is not None:
            headers[TOKEN_HEADER] = token
        status, body = self._request("GET", path, headers)
        if status == 401 and token is not None:
            # The token expired or IMDS restarted: get a new one once.
            log.debug("IMDS token rejected; refreshing")
            self._token = None
            token = self._current_token()
            headers[TOKEN_HEADER] = token or ""
            status, body = self._request("GET", path, headers)
        if status == 200:
            return body
        if status == 404:
            return None
        if status >= 500 or status in (401, 429):
            raise _Retry(f"HTTP {status}")
        raise ImdsUnavailable(f"IMDS answered HTTP {status} for {path}",
                              hint="check the instance's metadata options")

    def _current_token(self) -> str | None:
        if self._v1:
            return None
        if self._token is not None and self._clock() < self._token_expires:
            return self._token
        ttl = self._opt.token_ttl
        status, body = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(ttl)})
        if status == 200:
            self._token = _check_token(body)
            # Renew a little early so a token never expires between check and use.
            self._token_expires = self._clock() + max(1.0, ttl * 0.9)
            return self._token
        if status >= 500 or status == 429:
            raise _Retry(f"token request: HTTP {status}")
        if self._opt.allow_v1 and status in (403, 404, 405):
            log.warning("IMDSv2 token refused (HTTP %d); falling back to IMDSv1 "
                        "because imds.allow_v1 is set", status)
            self._v1 = True
            return None
        # 403 means IMDS is disabled for this instance or the hop limit is too
        # low: retrying cannot help, so fail fast.
        raise ImdsUnavailable(
            f"IMDS refused a session token (HTTP {status})",
            hint="enable IMDSv2 on the instance (HttpTokens, HttpPutResponseHopLimit >= 2 "
            "in containers), or set imds.allow_v1: true to accept IMDSv1",
        )

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """One request on a fresh connection, bounded wall-clock by ``timeout``.

        http.client follows no redirects and uses no proxy; the body is read
        up to :data:`MAX_ANSWER_BYTES` + 1 so an oversized answer is caught.
        """
        import http.client  # pulls in email (~15 ms): only on EC2

        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self._opt.timeout)
        watchdog = _Watchdog(conn, self._opt.timeout)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read(MAX_ANSWER_BYTES + 1)
            status = int(resp.status)
        except (OSError, http.client.HTTPException) as exc:
            if watchdog.fired:
                raise _Retry(f"no complete answer within {self._opt.timeout:g}s") from None
            raise _Retry(str(exc) or type(exc).__name__) from None
        finally:
            watchdog.cancel()
            conn.close()
        if watchdog.fired:
            raise _Retry(f"no complete answer within {self._opt.timeout:g}s")
        if 300 <= status < 400:
            raise ImdsUnavailable(
                f"IMDS answered {method} {path} with a redirect (HTTP {status}); "
                "redirects are never followed",
                hint="IMDS is link-local and never redirects: check "
                "AWS_EC2_METADATA_SERVICE_ENDPOINT and what answers on it")
        if len(body) > MAX_ANSWER_BYTES:
            raise ImdsUnavailable(
                f"IMDS answer for {path} is larger than {MAX_ANSWER_BYTES} bytes",
                hint="no IMDS document is that large: check what answers on the IMDS endpoint")
        return status, body


class _Watchdog:
    """Shuts ``conn``'s socket after ``seconds``, so no read can outlive the request's bound."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.fired = False
        self._conn = conn
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in another thread

    def cancel(self) -> None:
        self._timer.cancel()


def _check_token(raw: bytes) -> str:
    """The token as sent back in a header: printable ASCII, bounded; IdentityError else."""
    token = raw.strip()
    if not token or len(token) > MAX_TOKEN_LEN or not _TOKEN_RE.match(
            token.decode("latin-1")):
        raise IdentityError(
            f"IMDS returned an invalid session token ({len(token)} bytes; a token is "
            f"1-{MAX_TOKEN_LEN} printable ASCII characters, no spaces or line breaks)",
            hint="check what answers on the IMDS endpoint "
            "(AWS_EC2_METADATA_SERVICE_ENDPOINT); the token was not used")
    return token.decode("ascii")
