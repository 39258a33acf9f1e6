"""A small IMDSv2 client that copes with boot-time networking.

Why our own: botocore's IMDS fetchers cover credentials and region only,
treat 404 as a failure and never refresh an expired token. This client:

* gets a session token (PUT with a TTL), reuses it, and refreshes it on 401;
* answers ``None`` for 404 (absent is a normal answer, e.g. no user-data);
* retries connection errors, timeouts and 5xx with exponential backoff and
  full jitter, inside a total wait budget, because instances often start
  before the link-local route is up;
* uses IMDSv1 only when explicitly allowed.

The endpoint honours ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` and
``AWS_EC2_METADATA_DISABLED`` like the AWS SDKs do. Tokens are never logged.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pullboot.errors import IdentityError

if TYPE_CHECKING:
    import urllib.request

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT: Final = "http://169.254.169.254"
TOKEN_PATH: Final = "/latest/api/token"  # noqa: S105 - a URL path, not a secret
TTL_HEADER: Final = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER: Final = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
# Once IMDS has answered, later calls get a short budget of their own: the
# long boot budget is for waiting for the network, not for a flaky answer.
AFTER_FIRST_CONTACT_BUDGET: Final = 10.0


class ImdsUnavailable(IdentityError):
    """IMDS did not answer within the wait budget, or refused us for good."""


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
    """IMDSv2 client. Construction does no I/O; the first ``get`` fetches a token."""

    def __init__(
        self,
        options: ImdsOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opt = options
        self._sleep = sleep
        self._clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self._v1 = False
        self._contacted = False

    def get(self, path: str) -> bytes | None:
        """GET ``path`` (e.g. ``/latest/user-data``); ``None`` if IMDS says 404."""
        return self._with_retries(lambda: self._get_once(path), path)

    def get_text(self, path: str) -> str | None:
        """Like :meth:`get`, decoded as UTF-8 and stripped."""
        raw = self.get(path)
        return None if raw is None else raw.decode("utf-8", "replace").strip()

    # -- internals -----------------------------------------------------------

    def _with_retries(self, attempt: Callable[[], bytes | None], what: str) -> bytes | None:
        budget = AFTER_FIRST_CONTACT_BUDGET if self._contacted else self._opt.budget
        deadline = self._clock() + budget
        tries = 0
        while True:
            tries += 1
            try:
                result = attempt()
            except _Retry as exc:
                delay = random.uniform(0, min(self._opt.backoff_cap,
                                              self._opt.backoff_base * 2 ** tries))
                left = deadline - self._clock()
                if left <= 0:
                    raise ImdsUnavailable(
                        f"IMDS at {self._opt.endpoint} did not answer {what} within "
                        f"{budget:.0f}s ({tries} tries; last: {exc})",
                        hint="check that the instance metadata service is enabled "
                        "(HttpEndpoint=enabled), or set imds.enabled: false / "
                        "AWS_EC2_METADATA_DISABLED=true when not on EC2",
                    ) from None
                log.debug("IMDS %s: %s; retry %d in %.2fs", what, exc, tries, delay)
                self._sleep(min(delay, left))
                continue
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
            self._token = body.decode("ascii", "replace").strip()
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
        # urllib.request pulls in http.client and email (~15 ms): only on EC2.
        import urllib.error
        import urllib.request
        from http.client import HTTPException

        url = self._opt.endpoint + path
        req = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310
        try:
            with _opener().open(req, timeout=self._opt.timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return int(exc.code), exc.read()
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retry(str(reason) or type(exc).__name__) from None


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    """IMDS must never go through an HTTP proxy from the environment."""
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))
