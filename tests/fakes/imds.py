"""The IMDSv2 fake: the simulator's emulator, :mod:`pullboot.sim.imds` (one implementation).

:class:`HostileIMDS` extends it with test-only faults (drip, redirect, bad token, oversize).
"""

import functools
import time
from typing import Any

from pullboot.sim._server import SwitchableServer
from pullboot.sim.imds import (
    IDENTITY_PATH,
    MAX_TTL_S,
    TOKEN_HEADER,
    TOKEN_PATH,
    TTL_HEADER,
    FakeIMDS,
    RequestRecord,
    _IMDSHandler,
)

__all__ = ["IDENTITY_PATH", "MAX_TTL_S", "TOKEN_HEADER", "TOKEN_PATH", "TTL_HEADER", "FakeIMDS",
           "HostileIMDS", "RequestRecord"]


class HostileIMDS(FakeIMDS):
    """FakeIMDS with the faults of a hostile or broken metadata endpoint (tests only).

    * ``drip_bps``: every response (status line, headers, body) is written at this many bytes
      per second, so one request lasts far longer than any per-read timeout; bounded by the
      server (``pause`` ends on ``stop()``), and each connection by ``drip_limit_s``.
    * ``redirect_to``: every request but the token PUT is answered ``302 Found`` with
      ``Location`` set to this URL plus the request path.
    * ``token``: the raw bytes handed out as session token (e.g. with CRLF or 0xFF).
    * ``oversize``: bytes served as every document's body instead of the real one.
    """

    def __init__(self, *, drip_bps: float | None = None, redirect_to: str | None = None,
                 token: bytes | None = None, oversize: bytes | None = None,
                 drip_limit_s: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drip_bps, self.redirect_to = drip_bps, redirect_to
        self.token, self.oversize, self.drip_limit_s = token, oversize, drip_limit_s
        self._server = SwitchableServer(functools.partial(_HostileHandler, fake=self),
                                        name="hostile-imds")

    def _issue_token(self, ttl_header: str | None, forwarded: bool) -> tuple[int, bytes]:
        status, body = super()._issue_token(ttl_header, forwarded)
        return (status, self.token) if status == 200 and self.token is not None else (status,
                                                                                      body)

    def _authorised(self, token: str | None) -> bool:
        return True if self.token is not None else super()._authorised(token)

    def _lookup(self, path: str) -> bytes | None:
        return self.oversize if self.oversize is not None else super()._lookup(path)


class _HostileHandler(_IMDSHandler):
    fake: HostileIMDS

    def send_plain(self, status: int, body: bytes = b"", *, content_type: str = "text/plain",
                   headers: dict[str, str] | None = None) -> None:
        if self.fake.redirect_to is not None and self.path != TOKEN_PATH:
            super().send_plain(302, b"", headers={"Location": self.fake.redirect_to + self.path})
            return
        rate = self.fake.drip_bps
        if rate is None:
            super().send_plain(status, body, content_type=content_type, headers=headers)
            return
        head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n" +
                "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n").encode()
        self.close_connection = True
        deadline = time.monotonic() + self.fake.drip_limit_s
        for i in range(len(head + body)):
            if time.monotonic() > deadline or self.server.pause(self.request, 1 / rate):
                return
            self.wfile.write((head + body)[i:i + 1])
            self.wfile.flush()
